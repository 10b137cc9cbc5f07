"""Unified kernel image: the systemd stub plus ``.osrel .cmdline .uname .initrd .linux``.

The stub finds the kernel, initrd and command line in its own sections at run time, so
one PE file is everything the firmware needs to boot the initramfs.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.contract.arch import Arch
from guest.contract.errors import FormatError
from publisher.media.pe import add_sections, image_size, parse_pe

_MACHINE = {Arch.X86_64: 0x8664, Arch.AARCH64: 0xAA64}


@dataclass(frozen=True)
class UkiParts:
    stub: bytes
    kernel: bytes
    initrd: bytes
    cmdline: str
    uname: str = ""
    osrel: str = ""


def default_osrel(uname: str) -> str:
    """The ``.osrel`` text: enough os-release for boot menus to name the image."""
    version = f'VERSION_ID="{uname}"\n' if uname else ""
    return f'ID=cloudboot\nNAME="cloudboot boot image"\nPRETTY_NAME="cloudboot"\n{version}'


def build_uki(parts: UkiParts, arch: Arch) -> bytes:
    """Assemble the UKI; the stub and kernel must both be PE images for ``arch``."""
    stub = parse_pe(parts.stub, what="systemd stub")
    if stub.machine != _MACHINE[arch]:
        raise FormatError(f"stub is for {stub.arch}, not {arch.value}", what="systemd stub")
    kernel_size = image_size(parts.kernel)
    if kernel_size is None:
        raise FormatError(
            "kernel is not an EFI-stub PE image (needs CONFIG_EFI_STUB)", offset=0, what="kernel"
        )
    kernel_pe = parse_pe(parts.kernel, what="kernel")
    if kernel_pe.machine != _MACHINE[arch]:
        raise FormatError(f"kernel is for {kernel_pe.arch}, not {arch.value}", what="kernel")
    sections: list[tuple[str, bytes, int | None]] = [
        (".osrel", (parts.osrel or default_osrel(parts.uname)).encode(), None),
        (".cmdline", parts.cmdline.encode(), None),
    ]
    if parts.uname:
        sections.append((".uname", parts.uname.encode(), None))
    sections += [(".initrd", parts.initrd, None), (".linux", parts.kernel, kernel_size)]
    return add_sections(parts.stub, sections, what="systemd stub")
