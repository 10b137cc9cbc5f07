"""The hybrid boot.iso: ISO 9660 + El Torito for CD-ROMs, GPT for disks, one shared ESP.

Layout (byte offsets, 512-byte LBAs for the GPT):

    0        protective MBR (55 AA) + primary GPT, inside the ISO's 32 KiB system area
    32 KiB   ISO 9660 volume (pycdlib): PVD, El Torito boot record, catalog
    E        the FAT ESP (2048-aligned) = GPT partition 2 = the El Torito UEFI image
    end      backup GPT

pycdlib cannot point a boot entry outside its own tree, so it gets a one-sector
placeholder and the catalog entry is patched to the ESP afterwards (docs/wire-formats.md §8.1):
load RBA = E / 2048 and a sector count that covers the ESP, because OVMF reads a count
below 2 as "to the end of the ISO volume", which the appended ESP lies beyond.
"""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from guest.contract.errors import FormatError
from guest.contract.gpt import ESP_TYPE, SECTOR, GptLayout, Partition, build_gpt
from publisher.media.esp import write_fat

ISO_BLOCK = 2048
#: Name of boot.iso's ESP partition: not ``cloud-boot-cache``, and not empty, so the guest
#: never mistakes the read-only boot medium for its cache disk.
ISO_ESP_NAME = "cloudboot-boot-esp"
PLATFORM_EFI = 0xEF
_BOOT_RECORD = 17 * ISO_BLOCK
_PVD = 16 * ISO_BLOCK
_PLACEHOLDER = "/EFIBOOT.IMG;1"


@dataclass(frozen=True)
class BootEntry:
    """The initial/default El Torito entry as a firmware reads it."""

    platform: int
    bootable: bool
    media: int
    sector_count: int
    load_rba: int


def catalog_lba(iso: bytes) -> int:
    """LBA of the El Torito boot catalog, from the boot record volume descriptor."""
    record = iso[_BOOT_RECORD : _BOOT_RECORD + ISO_BLOCK]
    if record[1:6] != b"CD001" or not record[7:30].startswith(b"EL TORITO SPECIFICATION"):
        raise FormatError("no El Torito boot record at sector 17", offset=_BOOT_RECORD, what="iso")
    (lba,) = struct.unpack_from("<I", record, 0x47)
    return int(lba)


def read_boot_entry(iso: bytes) -> BootEntry:
    cat = catalog_lba(iso) * ISO_BLOCK
    validation, entry = iso[cat : cat + 32], iso[cat + 32 : cat + 64]
    if validation[0] != 1 or validation[30:32] != b"\x55\xaa":
        raise FormatError("bad El Torito validation entry", offset=cat, what="iso")
    count, rba = struct.unpack_from("<HI", entry, 6)
    return BootEntry(validation[1], entry[0] == 0x88, entry[1], count, rba)


def patch_boot_entry(iso: bytearray, *, load_rba: int, image_size: int) -> None:
    """Point the initial entry at ``load_rba`` (2048-byte blocks) covering ``image_size``.

    The count is in 512-byte sectors, capped at 65535 (a u16), as docs/wire-formats.md §4.3 says.
    """
    entry = catalog_lba(bytes(iso[: _BOOT_RECORD + ISO_BLOCK])) * ISO_BLOCK + 32
    count = min(-(-image_size // SECTOR), 0xFFFF)
    struct.pack_into("<HI", iso, entry + 6, count, load_rba)


def _iso_date(epoch: int) -> bytes:
    """A 17-byte PVD date (``YYYYMMDDHHMMSScc`` + GMT offset 0)."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y%m%d%H%M%S00").encode() + b"\0"


def _record_date(epoch: int) -> bytes:
    """A 7-byte directory-record date in UTC."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return bytes([dt.year - 1900, dt.month, dt.day, dt.hour, dt.minute, dt.second, 0])


def normalise_dates(iso: bytearray, epoch: int) -> None:
    """Stamp every date pycdlib took from the clock (PVD and directory records) with ``epoch``.

    pycdlib has no date parameter and uses local time; a reproducible image needs neither.
    """
    for off in (813, 830, 864):  # creation, modification, effective
        iso[_PVD + off : _PVD + off + 17] = _iso_date(epoch)
    stamp = _record_date(epoch)
    iso[_PVD + 156 + 18 : _PVD + 156 + 25] = stamp
    (root_lba,) = struct.unpack_from("<I", iso, _PVD + 156 + 2)
    (root_len,) = struct.unpack_from("<I", iso, _PVD + 156 + 10)
    pending = [(root_lba, root_len)]
    seen: set[int] = set()
    while pending:
        lba, length = pending.pop()
        if lba in seen:
            continue
        seen.add(lba)
        pos, end = lba * ISO_BLOCK, lba * ISO_BLOCK + length
        while pos < end:
            size = iso[pos]
            if size == 0:  # records do not cross blocks: skip to the next one
                pos = (pos // ISO_BLOCK + 1) * ISO_BLOCK
                continue
            iso[pos + 18 : pos + 25] = stamp
            flags, name_len = iso[pos + 25], iso[pos + 32]
            if flags & 2 and name_len == 1 and iso[pos + 33] > 1:
                (child,) = struct.unpack_from("<I", iso, pos + 2)
                (child_len,) = struct.unpack_from("<I", iso, pos + 10)
                pending.append((child, child_len))
            pos += size


def iso9660(esp_size: int, *, epoch: int, volume_ident: str = "CLOUDBOOT") -> bytes:
    """The ISO 9660 part: a volume whose El Torito UEFI entry points right after its end."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=volume_ident, app_ident_str="cloudboot")
    iso.add_fp(io.BytesIO(bytes(ISO_BLOCK)), ISO_BLOCK, _PLACEHOLDER)
    iso.add_eltorito(_PLACEHOLDER, bootcatfile="/BOOT.CAT;1", platform_id=PLATFORM_EFI,
                     media_name="noemul", boot_load_size=4)  # fmt: skip
    iso.rm_hard_link(iso_path=_PLACEHOLDER)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    data = bytearray(out.getvalue())
    data += bytes(-len(data) % ISO_BLOCK)
    patch_boot_entry(data, load_rba=len(data) // ISO_BLOCK, image_size=esp_size)
    normalise_dates(data, epoch)
    return bytes(data)


def hybrid_gpt(iso_len: int, esp_size: int, *, disk_guid: uuid.UUID, esp_guid: uuid.UUID,
               mbr_boot_code: bytes = b"") -> GptLayout:  # fmt: skip
    """GPT for the whole file: partition 2 = the ESP at ``iso_len``, backup after it."""
    if iso_len % ISO_BLOCK or esp_size % SECTOR:
        raise ValueError("ISO length must be 2048-aligned and ESP size 512-aligned")
    total = iso_len + esp_size + (1 + 32) * SECTOR
    first = iso_len // SECTOR
    esp = Partition(2, ESP_TYPE, esp_guid, first, first + esp_size // SECTOR - 1, ISO_ESP_NAME)
    return build_gpt(total, [esp], disk_guid, mbr_boot_code=mbr_boot_code)


def write_boot_iso(
    path: Path,
    efi_files: Mapping[str, bytes],
    *,
    esp_size: int,
    epoch: int,
    disk_guid: uuid.UUID,
    esp_guid: uuid.UUID,
    volume_id: int,
) -> None:
    """Write the whole hybrid image to ``path`` (a temp file the caller renames).

    The ESP is formatted in place at its offset; the untouched parts stay holes, so the
    file is sparse and the ESP bytes are written exactly once.
    """
    iso = bytearray(iso9660(esp_size, epoch=epoch))
    layout = hybrid_gpt(len(iso), esp_size, disk_guid=disk_guid, esp_guid=esp_guid,
                        mbr_boot_code=bytes(iso[:440]))  # fmt: skip
    iso[: len(layout.primary)] = layout.primary
    with open(path, "wb") as f:
        f.write(iso)
    write_fat(path, offset=len(iso), size=esp_size, files=efi_files, label="ESP",
              volume_id=volume_id, epoch=epoch)  # fmt: skip
    with open(path, "r+b") as f:
        f.seek(layout.backup_offset)
        f.write(layout.backup)
        if f.tell() != layout.disk_size:
            raise FormatError(f"boot.iso ended at {f.tell()}, expected {layout.disk_size}",
                              what=str(path))  # fmt: skip
