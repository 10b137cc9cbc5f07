"""The CPU architectures we boot, with every name each ecosystem uses for them.

Plans and OCI say ``amd64``/``arm64``, kernels and QEMU say ``x86_64``/``aarch64``,
UEFI says ``x64``/``aa64``. One enum that knows all of them keeps those translations out
of the callers.
"""

from __future__ import annotations

import enum
import os


class Arch(enum.Enum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"

    @property
    def oci(self) -> str:
        """Name in OCI platforms and in plans (``arch == "arm64"``)."""
        return {Arch.X86_64: "amd64", Arch.AARCH64: "arm64"}[self]

    @property
    def debian(self) -> str:
        """Debian architecture name (``dpkg --print-architecture``)."""
        return self.oci

    @property
    def efi_suffix(self) -> str:
        return {Arch.X86_64: "x64", Arch.AARCH64: "aa64"}[self]

    @property
    def efi_boot_file(self) -> str:
        r"""Removable-media boot path the firmware looks for (``\EFI\BOOT\BOOTX64.EFI``)."""
        return f"EFI/BOOT/BOOT{self.efi_suffix.upper()}.EFI"

    @property
    def qemu_binary(self) -> str:
        return f"qemu-system-{self.value}"

    @property
    def serial_console(self) -> str:
        return {Arch.X86_64: "ttyS0", Arch.AARCH64: "ttyAMA0"}[self]

    @classmethod
    def parse(cls, name: str) -> Arch:
        """Accept any of the names above (``amd64``, ``x86_64``, ``x64``, ``arm64`` ...)."""
        key = name.strip().lower()
        for arch in cls:
            if key in (arch.value, arch.oci, arch.efi_suffix):
                return arch
        raise ValueError(
            f"unknown architecture {name!r}; expected one of: "
            + ", ".join(f"{a.value} ({a.oci})" for a in cls)
        )

    @classmethod
    def host(cls) -> Arch:
        return cls.parse(os.uname().machine)


#: Plan-level arch names a plan may restrict a target to (upstream also knows riscv64).
PLAN_ARCHES = ("amd64", "arm64", "riscv64")
#: The arches we evaluate every plan for before publishing it.
BOOTABLE_PLAN_ARCHES = ("amd64", "arm64")


#: Arches an artifact may be published for beyond those we boot: upstream's guest also runs
#: on riscv64 (docs/wire-formats.md §2.3), with these other names for it.
_PUBLISH_ONLY = {"riscv64": ("riscv64", "riscv")}


def artifact_arch(name: str) -> str:
    """The OCI arch name an artifact for ``name`` carries: any of ``Arch``'s names, or
    riscv64 (published for upstream's guest; ours does not boot it)."""
    key = name.strip().lower()
    for oci_name, aliases in _PUBLISH_ONLY.items():
        if key in aliases:
            return oci_name
    try:
        return Arch.parse(key).oci
    except ValueError:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of: "
            + ", ".join([*(f"{a.value} ({a.oci})" for a in Arch), *_PUBLISH_ONLY])
        ) from None
