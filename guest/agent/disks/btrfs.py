"""btrfs superblocks: which devices are members of one filesystem (by fsid), for a
multi-device btrfs (RAID1 over two disks) mounted with every member named
(docs/disks.md). Pure: bytes in, facts out; the caller reads the 4 KiB at 64 KiB.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from guest.agent.blockdev import BlockDevice
from guest.agent.disks.bootfiles import DiskReadError

SUPERBLOCK_OFFSET = 0x10000
SUPERBLOCK_SIZE = 0x1000
MAGIC = b"_BHRfS_M"
#: More members than this is not a disk layout we boot from; refuse rather than scan on.
MAX_DEVICES = 16


@dataclass(frozen=True)
class Superblock:
    """What a btrfs superblock tells about its filesystem and this device in it."""

    fsid: str
    num_devices: int
    devid: int
    label: str


def parse_superblock(block: bytes) -> Superblock | None:
    """The primary superblock's identity; None when ``block`` is not a btrfs superblock."""
    if len(block) < 0x12B + 256 or block[0x40:0x48] != MAGIC:
        return None
    fsid = str(uuid.UUID(bytes=bytes(block[0x20:0x30])))
    (num_devices,) = struct.unpack_from("<Q", block, 0x88)
    (devid,) = struct.unpack_from("<Q", block, 0xC9)
    label = block[0x12B : 0x12B + 256].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return Superblock(fsid, num_devices, devid, label)


def read_superblock(node: Path) -> Superblock | None:
    try:
        with open(node, "rb") as f:
            f.seek(SUPERBLOCK_OFFSET)
            return parse_superblock(f.read(SUPERBLOCK_SIZE))
    except OSError:
        return None


def members(
    first: BlockDevice,
    devices: Iterable[BlockDevice],
    read: Callable[[Path], Superblock | None] = read_superblock,
) -> list[BlockDevice]:
    """``first`` and every other device with its fsid, ``first`` first, one per devid.

    Fewer than the superblock's ``num_devices`` is an error naming what was found: a
    degraded RAID1 is not mounted behind the user's back.
    """
    sb = read(first.node)
    if sb is None:
        raise DiskReadError("no btrfs superblock at 64 KiB", where=str(first.node))
    if not 1 <= sb.num_devices <= MAX_DEVICES:
        raise DiskReadError(
            f"btrfs says it has {sb.num_devices} devices (at most {MAX_DEVICES})",
            where=str(first.node),
        )
    found: dict[int, BlockDevice] = {sb.devid: first}
    for dev in devices:
        if dev.node == first.node or len(found) == sb.num_devices:
            continue
        other = read(dev.node)
        if other is not None and other.fsid == sb.fsid and other.devid not in found:
            found[other.devid] = dev
    if len(found) != sb.num_devices:
        names = ", ".join(d.name for d in found.values())
        raise DiskReadError(
            f"btrfs {sb.fsid} has {sb.num_devices} devices but only {len(found)} were found"
            f" ({names}); attach the others",
            where=str(first.node),
        )
    return [first, *(d for devid, d in sorted(found.items()) if d is not first)]
