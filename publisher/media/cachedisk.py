"""The writable cache disk (``menu-cache.raw``) the guest stages kernels on.

Exactly SIZE MiB: protective MBR, GPT (128 entries at LBA 2, backups at the end), one ESP
from LBA 2048 to the last usable LBA whose GPT partition *name* is ``cloud-boot-cache``
(what the guest looks for), FAT32 inside with ``/EFI`` and ``/EFI/Linux``.

It holds state (staged kernels, the firmware points Boot0001 at it), so it is never
rewritten behind the user's back: an existing cache disk is left byte-for-byte alone and
any other existing file is refused unless forced.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from guest.contract.efi.loadoption import CACHE_MARKER, CACHE_MARKER_TEXT
from guest.contract.errors import CloudbootError, FormatError
from guest.contract.fsutil import replacing
from guest.contract.gpt import (
    CACHE_PARTITION_NAME,
    ESP_TYPE,
    PRIMARY_SECTORS,
    SECTOR,
    GptLayout,
    Partition,
    build_gpt,
    last_usable_lba,
    read_gpt,
)
from publisher.config import CACHE_DISK_SIZE_MIB
from publisher.media.esp import FAT32_MIN, FatType, write_fat

MIB = 1024 * 1024
#: The marker file, as a FAT path (one fact: guest.contract.efi.loadoption.CACHE_MARKER).
MARKER = CACHE_MARKER.strip("\\").replace("\\", "/")
FIRST_LBA = 2048
DEFAULT_SIZE_MIB = CACHE_DISK_SIZE_MIB
#: FAT32 needs ~33 MiB; plus the 1 MiB gap and the backup GPT.
MIN_SIZE_MIB = FAT32_MIN // MIB + 2


class CacheDiskError(CloudbootError):
    pass


def cache_disk_layout(size_mib: int, *, disk_guid: uuid.UUID, part_guid: uuid.UUID) -> GptLayout:
    """The GPT of a cache disk of ``size_mib`` MiB (pure: the guest tests use it too)."""
    if size_mib < MIN_SIZE_MIB:
        raise CacheDiskError(f"cache disk must be at least {MIN_SIZE_MIB} MiB, got {size_mib}")
    total = size_mib * MIB // SECTOR
    part = Partition(
        1, ESP_TYPE, part_guid, FIRST_LBA, last_usable_lba(total), CACHE_PARTITION_NAME
    )
    return build_gpt(size_mib * MIB, [part], disk_guid)


def is_cache_disk(path: Path) -> bool:
    """Whether ``path`` already is a cache disk: GPT entry 1 named ``cloud-boot-cache``
    and the marker file on its FAT (a disk made before the marker is not one: the guest
    would refuse it, so it is re-made only with ``--force``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(PRIMARY_SECTORS * SECTOR)
        gpt = read_gpt(head)
    except (OSError, FormatError):
        return False
    part = next((p for p in gpt.partitions if p.number == 1), None)
    if part is None or part.name != CACHE_PARTITION_NAME:
        return False
    from pyfatfs.PyFatFS import PyFatFS

    try:
        fs = PyFatFS(str(path), offset=part.first_lba * SECTOR, read_only=True)
    except Exception:  # pyfatfs raises assorted types on a bad volume
        return False
    try:
        return bool(fs.exists("/" + MARKER))
    finally:
        fs.close()


def ensure_cache_disk(path: Path, size_mib: int = DEFAULT_SIZE_MIB, force: bool = False) -> bool:
    """Create the cache disk at ``path`` unless it exists; returns whether it was created.

    An existing cache disk is left untouched whatever ``size_mib`` says (it holds state);
    an existing file that is not one is refused unless ``force``. The new disk is built
    in a temp file next to ``path`` and renamed, so no one sees a half-written disk.
    """
    if path.exists():
        if is_cache_disk(path):
            return False
        if not force:
            raise CacheDiskError(
                f"exists and is not a cache disk (no GPT partition {CACHE_PARTITION_NAME!r} "
                f"with /{MARKER}); "
                "use --force to overwrite it",
                where=str(path),
            )
        if path.is_dir():
            raise CacheDiskError("is a directory", where=str(path))
    layout = cache_disk_layout(size_mib, disk_guid=uuid.uuid4(), part_guid=uuid.uuid4())
    with replacing(path, durable=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(layout.primary)
        part = layout.gpt.partitions[0]
        write_fat(tmp, offset=part.first_lba * SECTOR, size=part.size_sectors * SECTOR,
                  files={MARKER: CACHE_MARKER_TEXT}, dirs=["EFI/Linux"],
                  fat_type=FatType.FAT32, label="CBCACHE",
                  volume_id=int.from_bytes(part.unique_guid.bytes[:4], "little"))  # fmt: skip
        with open(tmp, "r+b") as f:
            f.seek(layout.backup_offset)
            f.write(layout.backup)
    return True
