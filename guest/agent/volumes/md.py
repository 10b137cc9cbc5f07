"""md RAID1 arrays (metadata 1.2) found and read in userland (docs/disks.md).

A RAID1 member holds the whole array at its ``data_offset``, so assembling means: read
the version-1 superblock 4 KiB into each device, group members by array UUID, and read
the in-sync member with the most recent event count. Nothing is written (no resync, no
event bump): the agent only reads a kernel and an initrd. Other levels are reported, not
read. The superblock is untrusted: its checksum is checked, ``max_dev`` and the offsets
are bounded by the device.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guest.agent.volumes.linear import Piece
from guest.contract.errors import CloudbootError

MD_MAGIC = 0xA92B4EFC
SUPERBLOCK_OFFSET = 4096  # metadata 1.2
MAX_DEVICES = 384
_ROLE_SPARE, _ROLE_FAULTY = 0xFFFF, 0xFFFE
_FEATURE_RECOVERY = 0x2
_FEATURE_RESHAPE = 0x4


class MdError(CloudbootError):
    pass


@dataclass(frozen=True)
class Member:
    """One md RAID member as its v1.x superblock describes it."""

    node: Path
    array_uuid: str
    name: str  # "homehost:name" as mdadm writes it
    level: int
    raid_disks: int
    data_offset: int  # bytes
    size: int  # bytes of the array each member holds
    events: int
    in_sync: bool


@dataclass(frozen=True)
class Array:
    """An assembled RAID1: its names and the member it is read from."""

    name: str
    array_uuid: str
    source: Member
    members: tuple[Path, ...]

    @property
    def short_name(self) -> str:
        return self.name.split(":", 1)[-1]

    def pieces(self) -> tuple[Piece, ...]:
        return (Piece(0, self.source.size, self.source.node, self.source.data_offset),)


def _checksum(sb: bytes) -> int:
    total = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    if len(sb) % 4:
        total += struct.unpack_from("<H", sb, len(sb) - 2)[0]
    total = (total & 0xFFFFFFFF) + (total >> 32)
    return int(total) & 0xFFFFFFFF


def parse_member(node: Path, sb: bytes, device_size: int) -> Member | None:
    """The member a version-1 superblock describes; None when there is none."""
    if len(sb) < 256 or struct.unpack_from("<I", sb)[0] != MD_MAGIC:
        return None
    where = f"{node}@{SUPERBLOCK_OFFSET}"
    major, feature_map = struct.unpack_from("<II", sb, 4)
    array_uuid, name = sb[16:32], sb[32:64]
    level, _layout, size, _chunk, raid_disks = struct.unpack_from("<iIQII", sb, 72)
    data_offset, data_size = struct.unpack_from("<QQ", sb, 128)
    (dev_number,) = struct.unpack_from("<I", sb, 160)
    events, _resync, csum, max_dev = struct.unpack_from("<QQII", sb, 200)
    if major != 1:
        raise MdError(f"md superblock version {major}", where=where)
    if max_dev > MAX_DEVICES or 256 + 2 * max_dev > len(sb):
        raise MdError(f"md superblock lists {max_dev} devices", where=where)
    body = sb[: 256 + 2 * max_dev]
    blanked = body[:216] + bytes(4) + body[220:]
    if _checksum(blanked) != csum:
        raise MdError("md superblock checksum does not match", where=where)
    if data_offset * 512 + size * 512 > device_size or data_size < size:
        raise MdError(f"md data {data_offset}+{size} sectors is outside the device", where=where)
    role = (
        struct.unpack_from("<H", body, 256 + 2 * dev_number)[0]
        if dev_number < max_dev
        else _ROLE_SPARE
    )
    in_sync = role < _ROLE_FAULTY and not feature_map & (_FEATURE_RECOVERY | _FEATURE_RESHAPE)
    return Member(
        node, str(uuid.UUID(bytes=array_uuid)), name.split(b"\0", 1)[0].decode("utf-8", "replace"),
        level, raid_disks, data_offset * 512, size * 512, events, in_sync,
    )  # fmt: skip


def read_member(node: Path) -> Member | None:
    try:
        with open(node, "rb") as f:
            device_size = f.seek(0, 2)
            f.seek(SUPERBLOCK_OFFSET)
            sb = f.read(4096)
    except OSError:
        return None
    return parse_member(node, sb, device_size)


def assemble(members: Iterable[Member]) -> list[Array]:
    """RAID1 arrays from their members: the in-sync member with the newest events."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(member.array_uuid, []).append(member)
    arrays = []
    for array_uuid, group in sorted(groups.items()):
        usable = [m for m in group if m.in_sync and m.level == 1]
        if not usable:
            continue
        newest = max(m.events for m in usable)
        source = min((m for m in usable if m.events == newest), key=lambda m: str(m.node))
        nodes = tuple(sorted(m.node for m in group))
        arrays.append(Array(source.name, array_uuid, source, nodes))
    return arrays


def level_note(members: Iterable[Member]) -> list[str]:
    """What was found and is not read (other RAID levels), for the log."""
    return sorted({f"md array {m.name or m.array_uuid} is raid{m.level}: only raid1 is read"
                   for m in members if m.level != 1})  # fmt: skip
