"""guest.contract.gpt: round trips, corruption detection, cross-checks against sgdisk both ways."""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from guest.contract.errors import FormatError
from guest.contract.gpt import (
    CACHE_PARTITION_NAME,
    ENTRY_SECTORS,
    ESP_TYPE,
    LINUX_DATA_TYPE,
    PRIMARY_SECTORS,
    SECTOR,
    Partition,
    build_gpt,
    guid_from,
    has_protective_mbr,
    last_usable_lba,
    parse_backup_gpt,
    parse_gpt,
    read_gpt,
)
from publisher.run import require_tool, run

MIB = 1024 * 1024


def write_disk(path: Path, size: int, parts: list[Partition], disk_guid: uuid.UUID) -> bytes:
    layout = build_gpt(size, parts, disk_guid)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(layout.primary)
        f.seek(layout.backup_offset)
        f.write(layout.backup)
    return path.read_bytes()


def two_parts(total_sectors: int) -> list[Partition]:
    return [
        Partition(1, ESP_TYPE, guid_from("esp"), 2048, 4095, CACHE_PARTITION_NAME),
        Partition(3, LINUX_DATA_TYPE, guid_from("root"), 4096, last_usable_lba(total_sectors),
                  "root ü"),
    ]  # fmt: skip


def test_build_then_parse_round_trip() -> None:
    size = 4 * MIB
    parts = two_parts(size // SECTOR)
    layout = build_gpt(size, parts, guid_from("disk"))
    assert len(layout.primary) == PRIMARY_SECTORS * SECTOR
    assert len(layout.backup) == (ENTRY_SECTORS + 1) * SECTOR
    assert layout.backup_offset + len(layout.backup) == size
    assert has_protective_mbr(layout.primary)
    assert layout.primary[510:512] == b"\x55\xaa"
    gpt = parse_gpt(layout.primary)
    assert gpt.partitions == tuple(parts)
    assert gpt.header.disk_guid == guid_from("disk")
    assert gpt.by_name(CACHE_PARTITION_NAME) == parts[0]
    assert [p.number for p in gpt.esps()] == [1]
    disk = bytearray(size)
    disk[: len(layout.primary)] = layout.primary
    disk[layout.backup_offset :] = layout.backup
    backup = parse_backup_gpt(bytes(disk))
    assert backup.partitions == gpt.partitions
    assert backup.header.current_lba == size // SECTOR - 1


def test_read_gpt_from_file_reads_only_what_it_needs(tmp_path: Path) -> None:
    size = 4 * MIB
    disk = tmp_path / "d.raw"
    write_disk(disk, size, two_parts(size // SECTOR), guid_from("disk"))
    with open(disk, "rb") as f:
        gpt = read_gpt(f)
    assert [p.name for p in gpt.partitions] == [CACHE_PARTITION_NAME, "root ü"]


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (SECTOR + 0, "no GPT signature"),
        (SECTOR + 40, "header CRC32"),
        (2 * SECTOR + 5, "entry array CRC32"),
    ],
)
def test_corruption_is_reported_with_offset(offset: int, message: str) -> None:
    layout = build_gpt(4 * MIB, two_parts(4 * MIB // SECTOR), guid_from("disk"))
    data = bytearray(layout.primary)
    data[offset] ^= 0xFF
    with pytest.raises(FormatError, match=message) as err:
        parse_gpt(bytes(data))
    assert "gpt@0x" in str(err.value)


def test_invalid_layouts_refused() -> None:
    size = 4 * MIB
    total = size // SECTOR
    with pytest.raises(ValueError, match="overlap"):
        overlapping = [
            Partition(1, ESP_TYPE, guid_from("a"), 2048, 3000),
            Partition(2, ESP_TYPE, guid_from("b"), 3000, 4000),
        ]
        build_gpt(size, overlapping, guid_from("d"))
    with pytest.raises(ValueError, match="outside usable"):
        build_gpt(size, [Partition(1, ESP_TYPE, guid_from("a"), 2048, total)], guid_from("d"))
    with pytest.raises(ValueError, match="longer than 36"):
        build_gpt(size, [Partition(1, ESP_TYPE, guid_from("a"), 2048, 3000, "x" * 37)],
                  guid_from("d"))  # fmt: skip


def test_guid_from_is_stable_and_distinct() -> None:
    assert guid_from("a", b"b") == guid_from("a", b"b")
    assert guid_from("ab") != guid_from("a", "b")
    assert guid_from("x").version == 4


def _sgdisk() -> str:
    return require_tool("sgdisk", "gdisk")


def test_sgdisk_accepts_our_table(tmp_path: Path) -> None:
    size = 8 * MIB
    disk = tmp_path / "ours.raw"
    parts = two_parts(size // SECTOR)
    write_disk(disk, size, parts, guid_from("disk"))
    verify = run([_sgdisk(), "-v", disk]).stdout.decode()
    assert "No problems found" in verify, verify
    info = run([_sgdisk(), "-i", "1", disk]).stdout.decode()
    assert "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in info
    assert str(parts[0].unique_guid).upper() in info
    assert "First sector: 2048" in info and "Last sector: 4095" in info
    assert f"Partition name: '{CACHE_PARTITION_NAME}'" in info
    info3 = run([_sgdisk(), "-i", "3", disk]).stdout.decode()
    assert "Partition name: 'root ü'" in info3
    printed = run([_sgdisk(), "-p", disk]).stdout.decode()
    assert str(guid_from("disk")).upper() in printed


def test_we_read_what_sgdisk_writes(tmp_path: Path) -> None:
    disk = tmp_path / "theirs.raw"
    disk.write_bytes(bytes(16 * MIB))
    unique = "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"
    run([_sgdisk(), "-o", "-n", "1:2048:+4M", "-t", "1:EF00", "-c", f"1:{CACHE_PARTITION_NAME}",
         "-u", f"1:{unique}", "-n", "2:0:0", "-t", "2:8300", "-c", "2:data", disk])  # fmt: skip
    data = disk.read_bytes()
    gpt = read_gpt(data[: PRIMARY_SECTORS * SECTOR])
    esp, linux = gpt.partitions
    assert (esp.number, esp.first_lba, esp.last_lba) == (1, 2048, 2048 + 8192 - 1)
    assert esp.type_guid == ESP_TYPE and esp.unique_guid == uuid.UUID(unique)
    assert esp.name == CACHE_PARTITION_NAME
    assert linux.type_guid == LINUX_DATA_TYPE and linux.name == "data"
    assert has_protective_mbr(data)
    assert parse_backup_gpt(data).partitions == gpt.partitions


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=6),
    names=st.lists(st.text(max_size=36), min_size=6, max_size=6),
)
def test_round_trip_property(sizes: list[int], names: list[str]) -> None:
    total = 8192
    lba = PRIMARY_SECTORS
    parts = []
    for i, size in enumerate(sizes):
        name = names[i].replace("\0", "")
        if len(name.encode("utf-16-le")) > 72:
            name = name[:10]
        parts.append(Partition(i + 1, LINUX_DATA_TYPE, guid_from(str(i)), lba, lba + size - 1,
                               name))  # fmt: skip
        lba += size
    layout = build_gpt(total * SECTOR, parts, guid_from("p"))
    assert parse_gpt(layout.primary).partitions == tuple(parts)


@pytest.mark.parametrize(
    ("count", "entry_size"),
    [(128, 0xFFFFFFF8), (16384, 1 << 20), (16384, 256), (128, 136)],
)
def test_entry_array_size_is_bounded_above(tmp_path: Path, count: int, entry_size: int) -> None:
    """A header with a valid CRC that asks for a huge entry array: a FormatError naming the
    header's offset, never a MemoryError (the array used to be read whole first)."""
    disk = tmp_path / "evil.raw"
    disk.write_bytes(bytes(4 * MIB))
    run([_sgdisk(), "-o", "-n", "1:2048:+1M", "-t", "1:EF00", disk])
    raw = bytearray(disk.read_bytes())
    header = SECTOR
    struct.pack_into("<II", raw, header + 80, count, entry_size)
    struct.pack_into("<I", raw, header + 16, 0)
    struct.pack_into("<I", raw, header + 16, zlib.crc32(raw[header : header + 92]))
    disk.write_bytes(raw)
    with open(disk, "rb") as f, pytest.raises(FormatError, match=r"gpt@0x250.*implausible"):
        read_gpt(f)
