"""EFI_LOAD_OPTION: the value of a ``Boot####`` variable (UEFI 2.x, section 3.1.3).

Layout: u32 attributes, u16 FilePathListLength, UCS-2 NUL-terminated description, the
device path list (FilePathListLength bytes), then optional data to the end. Our entries
carry the kernel's command line as UCS-2 optional data, which is what the Linux EFI stub
reads as its load options (``initrd=`` included).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from guest.contract.efi import ucs16
from guest.contract.efi.devpath import DevicePath, HardDrive
from guest.contract.errors import FormatError

LOAD_OPTION_ACTIVE = 0x1
#: The optional data edk2's boot manager gives the options it creates for devices
#: (``mBmAutoCreateBootOptionGuid``): how a firmware entry is told from one we wrote.
EDK2_AUTO_CREATED = uuid.UUID("8108ac4e-9f11-4d59-850e-e21a522c59b2").bytes_le
_HEAD = struct.Struct("<IH")


@dataclass(frozen=True)
class LoadOption:
    """An EFI_LOAD_OPTION: the value of a Boot#### variable."""

    attributes: int
    description: str
    device_path: DevicePath
    optional_data: bytes = b""

    def __bytes__(self) -> bytes:
        path = bytes(self.device_path)
        return (
            _HEAD.pack(self.attributes, len(path))
            + ucs16.encode(self.description)
            + path
            + self.optional_data
        )

    def __str__(self) -> str:
        text = self.optional_text()
        extra = f" [{text}]" if text is not None else ""
        return f"{self.description}: {self.device_path}{extra}"

    @property
    def firmware_created(self) -> bool:
        """edk2 made this option for a device (see :data:`EDK2_AUTO_CREATED`)."""
        return self.optional_data == EDK2_AUTO_CREATED

    def optional_text(self) -> str | None:
        """Optional data as UCS-2 text when it is that (our entries), else None."""
        if not self.optional_data or len(self.optional_data) % 2:
            return None
        try:
            text, end = ucs16.decode_at(self.optional_data, 0)
        except FormatError:
            return None
        return text if end == len(self.optional_data) else None

    @classmethod
    def from_bytes(cls, data: bytes) -> LoadOption:
        if len(data) < _HEAD.size + 2:
            raise FormatError(
                f"load option is {len(data)} bytes: too short", offset=0, what="EFI_LOAD_OPTION"
            )
        attributes, path_len = _HEAD.unpack_from(data, 0)
        description, pos = ucs16.decode_at(data, _HEAD.size, what="EFI_LOAD_OPTION description")
        if pos + path_len > len(data):
            raise FormatError(
                f"FilePathListLength {path_len} runs past the end", offset=4, what="EFI_LOAD_OPTION"
            )
        path = DevicePath.from_bytes(data[pos : pos + path_len], base=pos)
        return cls(attributes, description, path, data[pos + path_len :])


def safe_name(target: str) -> str:
    """File-name-safe form of a target name: anything outside ``[A-Za-z0-9._-]`` -> ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in target)


#: The file ``cloudboot cache-disk`` writes on the cache ESP. The guest stages only onto
#: an ESP that carries it: a partition merely *named* cloud-boot-cache (any USB stick can
#: be) is not chosen by accident. It is a marker, not a secret (docs/trust-model.md).
CACHE_MARKER = r"\EFI\cloud-boot-cache"
CACHE_MARKER_TEXT = b"cloudboot cache disk: staged kernels live in /EFI/Linux\n"


def staged_paths(target: str) -> tuple[str, str]:
    r"""ESP paths (``\EFI\Linux\<safe>-vmlinuz.efi``, ``...-initrd``) for a target."""
    safe = safe_name(target)
    return rf"\EFI\Linux\{safe}-vmlinuz.efi", rf"\EFI\Linux\{safe}-initrd"


def entry_description(target: str) -> str:
    """Our Boot0001's description: how firmware menus, and the agent, know it."""
    return f"cloud-boot {target}"


def cloudboot_entry(target: str, partition: HardDrive, cmdline: str) -> LoadOption:
    """The Boot0001 we write for a staged target (docs/wire-formats.md §5.7)."""
    kernel, initrd = staged_paths(target)
    options = f"initrd={initrd} {cmdline}".rstrip()
    return LoadOption(
        attributes=LOAD_OPTION_ACTIVE,
        description=entry_description(target),
        device_path=DevicePath.hd_file(partition, kernel),
        optional_data=ucs16.encode(options),
    )
