"""FAT EFI system partitions (the ESP of boot.iso, the cache disk's FAT32), via pyfatfs.

pyfatfs formats and fills the filesystem in place inside the target file at an offset,
so the ESP bytes are written once, straight into the image that carries them. This
module also owns the work-arounds for the pyfatfs behaviours of docs/wire-formats.md
§8.2: it stamps every timestamp from one epoch (pyfatfs reads the wall clock), checks
free space itself, keeps labels short and upper case, and repairs the FAT32 FSInfo counters
so ``fsck.vfat -n`` finds nothing to complain about.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from guest.contract.errors import CloudbootError, FormatError

MIB = 1024 * 1024
#: Smallest FAT32 pyfatfs will format (its cluster table starts at 32.5 MB).
FAT32_MIN = 33 * MIB
#: Above this, FAT16 would need more than 65524 clusters with pyfatfs's cluster sizes.
FAT16_MAX = 120 * MIB
_FSINFO_FREE = 488
#: BPB_SecPerTrk, BPB_NumHeads
_BPB_GEOMETRY = 24


class FatType(enum.IntEnum):
    FAT12 = 12
    FAT16 = 16
    FAT32 = 32


class EspError(CloudbootError):
    pass


def esp_size(payload_sizes: Sequence[int]) -> int:
    """1.5 x the EFI binaries' total + 8 MiB, rounded up to 16 MiB (docs/wire-formats.md §4.3)."""
    raw = sum(payload_sizes) * 3 // 2 + 8 * MIB
    return -(-raw // (16 * MIB)) * (16 * MIB)


def fat_type_for(size: int) -> FatType:
    """FAT16 up to 120 MiB (valid cluster counts with pyfatfs's table), FAT32 above."""
    if size < 8 * MIB:
        raise EspError(f"ESP of {size} bytes is too small (need at least 8 MiB)")
    return FatType.FAT16 if size <= FAT16_MAX else FatType.FAT32


def fat_label(label: str) -> str:
    """A label pyfatfs stores unmangled: up to 8 upper-case characters of [A-Z0-9_-]."""
    clean = "".join(c for c in label.upper() if c.isalnum() or c in "_-")[:8]
    return clean or "NO NAME"


def _dos_epoch(epoch: int) -> int:
    """Clamp to the DOS range (1980..2107): FAT cannot store earlier times."""
    return max(epoch, 315532800)


@contextlib.contextmanager
def _frozen_clock(epoch: int) -> Iterator[None]:
    """Make pyfatfs's ``DosDateTime.now`` return ``epoch`` (UTC) while we build.

    pyfatfs stamps new directory entries (also ``.``/``..`` and the volume label) from the
    wall clock and offers no parameter for it; a reproducible image needs one fixed time.
    """
    from pyfatfs.DosDateTime import DosDateTime

    fixed = datetime.fromtimestamp(_dos_epoch(epoch), tz=UTC)

    def now(*_: Any, **__: Any) -> Any:
        return DosDateTime(*fixed.timetuple()[:6])

    saved = DosDateTime.__dict__["now"]
    DosDateTime.now = now  # type: ignore[method-assign]
    try:
        yield
    finally:
        DosDateTime.now = saved  # type: ignore[method-assign]


@dataclass(frozen=True)
class FatGeometry:
    """Where things are in a FAT volume, from its boot sector (BPB); offsets in bytes."""

    fat_type: FatType
    cluster_size: int
    cluster_count: int
    fat_offset: int
    fat_size: int
    fsinfo_sectors: tuple[int, ...]

    @classmethod
    def parse(cls, boot: bytes) -> FatGeometry:
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise FormatError("no FAT boot sector signature", offset=510, what="FAT")
        bps, spc, reserved, nfats, root_entries, tot16 = struct.unpack_from("<HBHBHH", boot, 11)
        (fatsz16,) = struct.unpack_from("<H", boot, 22)
        tot32, fatsz32 = struct.unpack_from("<II", boot, 32)
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or nfats == 0:
            raise FormatError("implausible BPB", offset=11, what="FAT")
        fatsz = fatsz16 or fatsz32
        total = tot16 or tot32
        root_sectors = (root_entries * 32 + bps - 1) // bps
        data_sectors = total - reserved - nfats * fatsz - root_sectors
        clusters = data_sectors // spc
        kind = (
            FatType.FAT12
            if clusters < 4085
            else FatType.FAT16
            if clusters < 65525
            else FatType.FAT32
        )
        fsinfo: tuple[int, ...] = ()
        if kind is FatType.FAT32:
            fsinfo_sec, backup_sec = struct.unpack_from("<HH", boot, 48)
            fsinfo = (fsinfo_sec, backup_sec + fsinfo_sec) if backup_sec else (fsinfo_sec,)
        return cls(kind, bps * spc, clusters, reserved * bps, fatsz * bps,
                   tuple(s * bps for s in fsinfo))  # fmt: skip

    def free_clusters(self, fat: bytes) -> list[int]:
        """Numbers of the free clusters in the first FAT (FAT16/FAT32)."""
        if self.fat_type is FatType.FAT12:
            raise FormatError("FAT12 free-space scan not supported", what="FAT")
        width = 2 if self.fat_type is FatType.FAT16 else 4
        fmt = f"<{self.cluster_count}{'H' if width == 2 else 'I'}"
        entries = struct.unpack_from(fmt, fat, 2 * width)
        mask = 0xFFFF if width == 2 else 0x0FFFFFFF
        return [i + 2 for i, e in enumerate(entries) if not e & mask]


def fsinfo_update(geometry: FatGeometry, fat: bytes) -> tuple[int, int]:
    """The FSInfo (free count, next free cluster) that match the FAT."""
    free = geometry.free_clusters(fat)
    return len(free), (free[0] if free else 0xFFFFFFFF)


def fix_boot_sector(image: Path, offset: int) -> None:
    """Repair what pyfatfs leaves wrong in the FAT at ``offset`` (in place).

    - CHS geometry 0/0: mtools refuses the volume ("zero number of heads or sectors");
      we set the conventional 32 sectors x 64 heads in the boot sector and its backup.
    - FAT32 FSInfo free count from mkfs time: fsck.fat reports the mismatch; both FSInfo
      sectors are rewritten from the actual FAT.
    """
    with open(image, "r+b") as f:
        f.seek(offset)
        boot = f.read(512)
        geometry = FatGeometry.parse(boot)
        (backup,) = struct.unpack_from("<H", boot, 50)
        boot_sectors = [0]
        if geometry.fat_type is FatType.FAT32 and backup:
            boot_sectors.append(backup * 512)
        for sector in boot_sectors:
            f.seek(offset + sector + _BPB_GEOMETRY)
            f.write(struct.pack("<HH", 32, 64))
        if geometry.fat_type is not FatType.FAT32:
            return
        f.seek(offset + geometry.fat_offset)
        free, next_free = fsinfo_update(geometry, f.read(geometry.fat_size))
        for sector in geometry.fsinfo_sectors:
            f.seek(offset + sector + _FSINFO_FREE)
            f.write(struct.pack("<II", free, next_free))


def _abandon(fat: Any) -> None:
    """Close a pyfatfs volume after a failed write without writing to it again.

    Its own ``close`` first marks the volume clean, a write that fails again on a full
    disk and leaves the file open; its ``__del__`` then tries once more at exit and
    prints that error after ours. Marked read-only, it only closes the file.
    """
    fat.is_read_only = True
    with contextlib.suppress(Exception):
        fat.close()


def write_fat(
    image: Path,
    *,
    offset: int,
    size: int,
    files: Mapping[str, bytes],
    dirs: Sequence[str] = (),
    fat_type: FatType | None = None,
    label: str = "ESP",
    volume_id: int = 0x12345678,
    epoch: int = 0,
) -> None:
    """Format ``size`` bytes of ``image`` at ``offset`` as FAT and write ``files`` into it.

    ``files`` maps paths like ``EFI/BOOT/BOOTX64.EFI`` to contents; their parent
    directories and ``dirs`` are created. pyfatfs truncates the file to ``offset + size``:
    anything the caller wants after the filesystem is written afterwards.
    """
    from pyfatfs.PyFat import PyFat
    from pyfatfs.PyFatFS import PyFatFS

    kind = fat_type or fat_type_for(size)
    if kind is FatType.FAT32 and size < FAT32_MIN:
        raise EspError(f"FAT32 needs at least {FAT32_MIN // MIB} MiB, got {size} bytes")
    if offset % 512 or size % 512:
        raise EspError(f"FAT offset {offset} and size {size} must be multiples of 512")
    with _frozen_clock(epoch):
        fat = PyFat(offset=offset)
        try:
            fat.mkfs(str(image), fat_type=int(kind), size=size, label=fat_label(label),
                     volume_id=volume_id)  # fmt: skip
        except BaseException:
            _abandon(fat)
            raise
        fat.close()
        with open(image, "rb") as f:
            f.seek(offset)
            geometry = FatGeometry.parse(f.read(512))
        cluster = geometry.cluster_size
        all_dirs = set(dirs)
        for path in [*files, *dirs]:
            all_dirs.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
        need = sum(-(-len(d) // cluster) * cluster for d in files.values())
        need += cluster * (len(all_dirs) + 1)
        have = geometry.cluster_count * cluster
        if need > have:
            raise EspError(f"FAT of {size} bytes too small: {need} bytes needed, {have} usable")
        fs = PyFatFS(str(image), offset=offset, utc=True, lazy_load=False)
        try:
            for d in sorted(all_dirs, key=lambda p: (p.count("/"), p)):
                fs.makedir("/" + d, recreate=True)
            for path in sorted(files):
                with fs.openbin("/" + path, "wb") as out:
                    out.write(files[path])
        except BaseException:
            _abandon(fs.fs)
            with contextlib.suppress(Exception):
                fs.close()
            raise
        fs.close()
    fix_boot_sector(image, offset)
