"""GUID Partition Table (UEFI 2.10, section 5.3) and its protective MBR: parse and build.

Both sides of the boot flow need it: the host writes the GPT of boot.iso and of the cache
disk, the guest reads the cache disk's GPT to find the ESP named ``cloud-boot-cache``.
Everything here is bytes in, bytes out: the caller reads the first 34 sectors (or the
header's entry array) from a file or block device and hands the bytes over, so the same
code runs in the initramfs and under tests without any I/O of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from guest.contract.errors import FormatError

SECTOR = 512
SIGNATURE = b"EFI PART"
REVISION_1_0 = 0x00010000
HEADER_SIZE = 92
ENTRY_COUNT = 128
ENTRY_SIZE = 128
#: Upper bounds on the entry array a header may ask us to read: 16384 entries of 128 bytes
#: (2 MiB) is far past any real disk (128 x 128 is the usual array).
MAX_ENTRY_SIZE = 4096
MAX_ENTRY_ARRAY = 16384 * ENTRY_SIZE
#: Sectors the entry array occupies with the default 128 x 128 bytes.
ENTRY_SECTORS = ENTRY_COUNT * ENTRY_SIZE // SECTOR
#: LBA0 (MBR) + LBA1 (header) + the entry array: what a reader needs from the disk start.
PRIMARY_SECTORS = 2 + ENTRY_SECTORS

ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
LINUX_DATA_TYPE = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
#: The GPT partition name the guest looks for on the cache disk (docs/wire-formats.md §4.4).
CACHE_PARTITION_NAME = "cloud-boot-cache"

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_PART = struct.Struct("<B3sB3sII")
_NAME_CHARS = 36


def guid_from(*seeds: bytes | str) -> uuid.UUID:
    """A stable random-looking (version 4 layout) GUID derived from content.

    Reproducible images need GUIDs that depend only on their inputs, not on a clock or
    a random source; the same seeds always give the same GUID.
    """
    digest = hashlib.sha256()
    for seed in seeds:
        part = seed.encode() if isinstance(seed, str) else seed
        digest.update(struct.pack("<Q", len(part)) + part)
    return uuid.UUID(bytes=digest.digest()[:16], version=4)


@dataclass(frozen=True)
class Partition:
    """One used GPT entry. ``number`` is 1-based, as firmware device paths count it."""

    number: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str = ""
    attributes: int = 0

    @property
    def size_sectors(self) -> int:
        return self.last_lba - self.first_lba + 1

    @property
    def is_esp(self) -> bool:
        return self.type_guid == ESP_TYPE

    def entry_bytes(self) -> bytes:
        """The 128-byte on-disk entry (GUIDs mixed-endian, name UTF-16LE, NUL padded)."""
        name = self.name.encode("utf-16-le")
        if len(name) > _NAME_CHARS * 2:
            raise ValueError(
                f"GPT partition name longer than {_NAME_CHARS} characters: {self.name!r}"
            )
        return _ENTRY.pack(
            self.type_guid.bytes_le,
            self.unique_guid.bytes_le,
            self.first_lba,
            self.last_lba,
            self.attributes,
            name.ljust(72, b"\0"),
        )


@dataclass(frozen=True)
class GptHeader:
    """The 92 meaningful bytes of a GPT header (primary at LBA1 or backup at the last LBA)."""

    current_lba: int
    backup_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: uuid.UUID
    entries_lba: int
    entry_count: int = ENTRY_COUNT
    entry_size: int = ENTRY_SIZE
    entries_crc32: int = 0
    revision: int = REVISION_1_0

    def to_bytes(self) -> bytes:
        """A full sector: header with its own CRC32 computed, zero padded."""
        fields = (
            SIGNATURE,
            self.revision,
            HEADER_SIZE,
            0,
            0,
            self.current_lba,
            self.backup_lba,
            self.first_usable_lba,
            self.last_usable_lba,
            self.disk_guid.bytes_le,
            self.entries_lba,
            self.entry_count,
            self.entry_size,
            self.entries_crc32,
        )
        raw = bytearray(_HEADER.pack(*fields))
        struct.pack_into("<I", raw, 16, zlib.crc32(raw))
        return bytes(raw).ljust(SECTOR, b"\0")

    @classmethod
    def parse(cls, sector: bytes, *, offset: int = 0) -> GptHeader:
        """Parse and check (signature, size, CRC32) a header sector; ``offset`` is for errors."""
        if len(sector) < HEADER_SIZE:
            raise FormatError("GPT header truncated", offset=offset, what="gpt")
        (sig, revision, size, crc, _, current, backup, first, last, disk_guid, entries_lba,
         count, entry_size, entries_crc) = _HEADER.unpack_from(sector)  # fmt: skip
        if sig != SIGNATURE:
            raise FormatError(f"no GPT signature (found {sig!r})", offset=offset, what="gpt")
        if size < HEADER_SIZE or size > SECTOR:
            raise FormatError(
                f"GPT header size {size} out of range", offset=offset + 12, what="gpt"
            )
        raw = bytearray(sector[:size])
        struct.pack_into("<I", raw, 16, 0)
        if zlib.crc32(raw) != crc:
            raise FormatError("GPT header CRC32 mismatch", offset=offset + 16, what="gpt")
        # UEFI: SizeOfPartitionEntry is 128 x 2^n. Bounded above too: count x size bytes
        # are read and held, and a 4 GiB "entry" made that a MemoryError.
        if (
            entry_size < ENTRY_SIZE
            or entry_size > MAX_ENTRY_SIZE
            or entry_size & (entry_size - 1)
            or count == 0
            or count * entry_size > MAX_ENTRY_ARRAY
        ):
            raise FormatError(
                f"implausible GPT entry array ({count} x {entry_size} bytes)",
                offset=offset + 80,
                what="gpt",
            )
        return cls(
            current_lba=current,
            backup_lba=backup,
            first_usable_lba=first,
            last_usable_lba=last,
            disk_guid=uuid.UUID(bytes_le=disk_guid),
            entries_lba=entries_lba,
            entry_count=count,
            entry_size=entry_size,
            entries_crc32=entries_crc,
            revision=revision,
        )

    @property
    def entries_bytes_len(self) -> int:
        return self.entry_count * self.entry_size


@dataclass(frozen=True)
class Gpt:
    """A parsed table: the header that was read and its used entries, in entry order."""

    header: GptHeader
    partitions: tuple[Partition, ...] = field(default_factory=tuple)

    def esps(self) -> list[Partition]:
        return [p for p in self.partitions if p.is_esp]

    def by_name(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)


def parse_entries(header: GptHeader, data: bytes, *, offset: int = 0) -> tuple[Partition, ...]:
    """Parse the entry array ``data`` (starting at the header's entry LBA) and check its CRC32."""
    size = header.entries_bytes_len
    if len(data) < size:
        raise FormatError(
            f"GPT entry array truncated: need {size} bytes, have {len(data)}",
            offset=offset,
            what="gpt",
        )
    array = data[:size]
    if zlib.crc32(array) != header.entries_crc32:
        raise FormatError("GPT entry array CRC32 mismatch", offset=offset, what="gpt")
    parts = []
    for i in range(header.entry_count):
        start = i * header.entry_size
        type_le, unique_le, first, last, attrs, name = _ENTRY.unpack_from(array, start)
        if type_le == bytes(16):
            continue
        if last < first:
            raise FormatError(
                f"GPT entry {i + 1}: last LBA {last} before first LBA {first}",
                offset=offset + start + 32,
                what="gpt",
            )
        parts.append(
            Partition(
                number=i + 1,
                type_guid=uuid.UUID(bytes_le=type_le),
                unique_guid=uuid.UUID(bytes_le=unique_le),
                first_lba=first,
                last_lba=last,
                name=name.decode("utf-16-le", errors="replace").split("\0", 1)[0],
                attributes=attrs,
            )
        )
    return tuple(parts)


def parse_gpt(data: bytes) -> Gpt:
    """Parse a GPT from the first sectors of a disk (LBA0..LBA33 or more).

    The primary header is at LBA1; its entry array must lie inside ``data`` (it does for
    every GPT written by sgdisk, xorriso or us: LBA2). A reader that has the whole disk can
    fall back to the backup with ``parse_backup_gpt``.
    """
    if len(data) < 2 * SECTOR:
        raise FormatError(f"need at least {2 * SECTOR} bytes, have {len(data)}", what="gpt")
    header = GptHeader.parse(data[SECTOR : 2 * SECTOR], offset=SECTOR)
    start = header.entries_lba * SECTOR
    if start + header.entries_bytes_len > len(data):
        raise FormatError(
            f"GPT entry array at LBA {header.entries_lba} lies beyond the {len(data)} bytes given",
            offset=start,
            what="gpt",
        )
    return Gpt(header, parse_entries(header, data[start:], offset=start))


def parse_backup_gpt(disk: bytes) -> Gpt:
    """Parse the backup GPT at the last LBA of a whole-disk image."""
    last = len(disk) // SECTOR - 1
    header = GptHeader.parse(disk[last * SECTOR : (last + 1) * SECTOR], offset=last * SECTOR)
    start = header.entries_lba * SECTOR
    return Gpt(header, parse_entries(header, disk[start:], offset=start))


class _Readable(Protocol):
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def read(self, size: int = ..., /) -> bytes: ...


def read_gpt(source: bytes | BinaryIO | _Readable) -> Gpt:
    """Parse a GPT from bytes of the disk start, or from a seekable binary file/device.

    With a file, only LBA1 and the header's entry array are read, wherever it lies.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return parse_gpt(bytes(source))
    source.seek(SECTOR)
    header = GptHeader.parse(source.read(SECTOR), offset=SECTOR)
    source.seek(header.entries_lba * SECTOR)
    entries = source.read(header.entries_bytes_len)
    return Gpt(header, parse_entries(header, entries, offset=header.entries_lba * SECTOR))


def has_protective_mbr(data: bytes) -> bool:
    """Whether LBA0 carries the 55 AA signature and a 0xEE partition record."""
    if len(data) < SECTOR or data[510:512] != b"\x55\xaa":
        return False
    return any(data[446 + 16 * i + 4] == 0xEE for i in range(4))


def protective_mbr(total_sectors: int, boot_code: bytes = b"") -> bytes:
    """LBA0: optional boot code (up to 440 bytes) + one 0xEE record covering the disk + 55 AA.

    ``boot_code`` lets a hybrid ISO keep whatever its system area starts with.
    """
    if len(boot_code) > 440:
        raise ValueError("MBR boot code is limited to 440 bytes")
    size = min(total_sectors - 1, 0xFFFFFFFF)
    record = _MBR_PART.pack(0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    return boot_code.ljust(440, b"\0") + bytes(6) + record + bytes(48) + b"\x55\xaa"


@dataclass(frozen=True)
class GptLayout:
    """A GPT ready to be written: the bytes for the disk start and the bytes for its end.

    ``primary`` covers LBA0..LBA33 (protective MBR, header, entries); ``backup`` (entries
    then header) goes at byte ``backup_offset`` and runs to the end of the disk.
    """

    total_sectors: int
    primary: bytes
    backup: bytes
    gpt: Gpt

    @property
    def backup_offset(self) -> int:
        return (self.total_sectors - 1 - ENTRY_SECTORS) * SECTOR

    @property
    def disk_size(self) -> int:
        return self.total_sectors * SECTOR


def first_usable_lba() -> int:
    return PRIMARY_SECTORS


def last_usable_lba(total_sectors: int) -> int:
    return total_sectors - 2 - ENTRY_SECTORS


def build_gpt(
    disk_size: int,
    partitions: list[Partition] | tuple[Partition, ...],
    disk_guid: uuid.UUID,
    *,
    mbr_boot_code: bytes = b"",
) -> GptLayout:
    """Build protective MBR + primary and backup GPT for a disk of ``disk_size`` bytes.

    Partitions keep their ``number`` as the entry slot. Overlaps and out-of-range LBAs are
    refused: a table sgdisk would reject must never be written.
    """
    if disk_size % SECTOR:
        raise ValueError(f"disk size {disk_size} is not a multiple of {SECTOR}")
    total = disk_size // SECTOR
    first, last = first_usable_lba(), last_usable_lba(total)
    if last < first:
        raise ValueError(f"disk of {disk_size} bytes is too small for a GPT")
    entries = bytearray(ENTRY_COUNT * ENTRY_SIZE)
    ordered = sorted(partitions, key=lambda p: p.first_lba)
    for prev, cur in itertools.pairwise(ordered):
        if cur.first_lba <= prev.last_lba:
            raise ValueError(f"partitions {prev.number} and {cur.number} overlap")
    for part in partitions:
        if not 1 <= part.number <= ENTRY_COUNT:
            raise ValueError(f"partition number {part.number} out of 1..{ENTRY_COUNT}")
        if part.first_lba < first or part.last_lba > last or part.last_lba < part.first_lba:
            raise ValueError(
                f"partition {part.number} LBAs {part.first_lba}..{part.last_lba} outside "
                f"usable {first}..{last}"
            )
        start = (part.number - 1) * ENTRY_SIZE
        entries[start : start + ENTRY_SIZE] = part.entry_bytes()
    crc = zlib.crc32(entries)
    primary_header = GptHeader(
        current_lba=1,
        backup_lba=total - 1,
        first_usable_lba=first,
        last_usable_lba=last,
        disk_guid=disk_guid,
        entries_lba=2,
        entries_crc32=crc,
    )
    backup_header = GptHeader(
        current_lba=total - 1,
        backup_lba=1,
        first_usable_lba=first,
        last_usable_lba=last,
        disk_guid=disk_guid,
        entries_lba=total - 1 - ENTRY_SECTORS,
        entries_crc32=crc,
    )
    primary = protective_mbr(total, mbr_boot_code) + primary_header.to_bytes() + bytes(entries)
    backup = bytes(entries) + backup_header.to_bytes()
    numbered = tuple(sorted(partitions, key=lambda p: p.number))
    return GptLayout(total, primary, backup, Gpt(primary_header, numbered))
