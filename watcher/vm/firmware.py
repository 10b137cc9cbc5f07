"""UEFI firmware for QEMU: the read-only code image and the variable-store template.

The template is what "NVRAM reset" restores: a per-VM copy of it is the vars pflash, so
the firmware's writes (Boot0001, BootOrder) land in that copy and never in /usr/share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from watcher.vm.spec import VmError


@dataclass(frozen=True)
class Firmware:
    code: Path
    vars_template: Path


#: Known locations, best first: Debian/Ubuntu, Fedora, Homebrew's qemu.
_BREW = "/opt/homebrew/share/qemu"
_EDK2 = "/usr/share/edk2"
CANDIDATES: dict[Arch, tuple[tuple[str, str], ...]] = {
    Arch.X86_64: (
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        (f"{_EDK2}/ovmf/OVMF_CODE.fd", f"{_EDK2}/ovmf/OVMF_VARS.fd"),
        (f"{_BREW}/edk2-x86_64-code.fd", f"{_BREW}/edk2-i386-vars.fd"),
    ),
    Arch.AARCH64: (
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        (f"{_EDK2}/aarch64/QEMU_EFI-pflash.raw", f"{_EDK2}/aarch64/vars-template-pflash.raw"),
        (f"{_BREW}/edk2-aarch64-code.fd", f"{_BREW}/edk2-arm-vars.fd"),
    ),
}

DEBIAN_PACKAGE = {Arch.X86_64: "ovmf", Arch.AARCH64: "qemu-efi-aarch64"}


def find_firmware(
    arch: Arch, candidates: dict[Arch, tuple[tuple[str, str], ...]] = CANDIDATES
) -> Firmware:
    """The first code + vars pair present on this machine for ``arch``."""
    for code, template in candidates[arch]:
        if Path(code).is_file() and Path(template).is_file():
            return Firmware(Path(code), Path(template))
    looked = ", ".join(code for code, _ in candidates[arch])
    raise VmError(
        f"no UEFI firmware for {arch.value} (looked for {looked}); "
        f"install the Debian package {DEBIAN_PACKAGE[arch]}"
    )
