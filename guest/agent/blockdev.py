"""Block devices as the guest sees them, and device specs resolved to them
(docs/wire-formats.md §1.3, §5.4).

A plan names its disk as ``/dev/vda3``, ``LABEL=``, ``UUID=``, ``PARTLABEL=`` or
``PARTUUID=``. There is no udev (and no blkid) in our initramfs, so we list devices from
sysfs, read filesystem labels/UUIDs from superblocks and partition names/GUIDs from the
GPT ourselves. sysfs and /dev are parameters: the host tests point them at a directory
tree whose "device nodes" are image files.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guest.contract import gpt
from guest.contract.errors import CloudbootError, FormatError

EXT_SUPERBLOCK_OFFSET = 1024
EXT_MAGIC = 0xEF53
XFS_MAGIC = b"XFSB"
#: btrfs's primary superblock; its magic, fsid and label (docs/disks.md).
BTRFS_SUPERBLOCK = 0x10000
BTRFS_MAGIC = b"_BHRfS_M"
HEAD_SIZE = BTRFS_SUPERBLOCK + 0x1000


class DeviceNotFoundError(CloudbootError):
    pass


class AmbiguousDeviceError(CloudbootError):
    """Two devices carry the label/UUID a plan names."""


@dataclass(frozen=True)
class BlockDevice:
    """A disk or partition: kernel name, device node, and for partitions parent + number."""

    name: str
    node: Path
    disk: str
    partition: int = 0  # 0 = whole disk

    @property
    def is_partition(self) -> bool:
        return self.partition != 0


@dataclass(frozen=True)
class FsIdentity:
    """What a superblock says about itself: type, label and UUID (empty when unknown)."""

    fs: str
    label: str
    uuid: str


def scan(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[BlockDevice]:
    """Every disk under ``/sys/block`` and its partitions, sorted by kernel name."""
    devices: list[BlockDevice] = []
    block = sys_root / "block"
    if not block.is_dir():
        return devices
    for disk_dir in sorted(block.iterdir()):
        disk = disk_dir.name
        if disk.startswith(("loop", "ram", "zram")):
            continue
        devices.append(BlockDevice(disk, dev_root / disk, disk))
        for part_dir in sorted(disk_dir.iterdir()):
            number_file = part_dir / "partition"
            if number_file.is_file():
                number = int(number_file.read_text().strip())
                devices.append(BlockDevice(part_dir.name, dev_root / part_dir.name, disk, number))
    return devices


def identify(head: bytes) -> FsIdentity | None:
    """Filesystem type/label/UUID from the head of a device (ext2/3/4, FAT, xfs, btrfs).

    A btrfs over several devices has the same fsid (and label) on each of them.
    """
    if head[:4] == XFS_MAGIC and len(head) >= 120:
        label = head[108:120].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return FsIdentity("xfs", label, str(uuid.UUID(bytes=head[32:48])))
    sb = head[BTRFS_SUPERBLOCK : BTRFS_SUPERBLOCK + 0x22B]
    if len(sb) == 0x22B and sb[0x40:0x48] == BTRFS_MAGIC:
        label = sb[0x12B:0x22B].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return FsIdentity("btrfs", label, str(uuid.UUID(bytes=sb[0x20:0x30])))
    sb = head[EXT_SUPERBLOCK_OFFSET : EXT_SUPERBLOCK_OFFSET + 1024]
    if len(sb) >= 0x88 and struct.unpack_from("<H", sb, 0x38)[0] == EXT_MAGIC:
        raw_uuid = sb[0x68:0x78]
        label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return FsIdentity("ext4", label, str(uuid.UUID(bytes=raw_uuid)))
    if len(head) >= 90 and head[510:512] == b"\x55\xaa" and head[82:90] == b"FAT32   ":
        serial = struct.unpack_from("<I", head, 67)[0]
        label = head[71:82].decode("ascii", errors="replace").rstrip()
        return FsIdentity(
            "vfat", "" if label == "NO NAME" else label, f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
        )
    if len(head) >= 62 and head[510:512] == b"\x55\xaa" and head[54:59] == b"FAT1":
        serial = struct.unpack_from("<I", head, 39)[0]
        label = head[43:54].decode("ascii", errors="replace").rstrip()
        return FsIdentity(
            "vfat", "" if label == "NO NAME" else label, f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
        )
    return None


def _read_head(node: Path, size: int = HEAD_SIZE) -> bytes:
    try:
        with open(node, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def read_disk_gpt(node: Path) -> gpt.Gpt | None:
    """The disk's GPT, or None for disks without one (or unreadable ones)."""
    try:
        with open(node, "rb") as f:
            return gpt.read_gpt(f)
    except (OSError, FormatError):
        return None


def resolve(spec: str, devices: Iterable[BlockDevice]) -> BlockDevice:
    """The one device a spec names; errors list what was seen so the user can fix the plan."""
    devices = list(devices)
    key, sep, value = spec.partition("=")
    if not sep:
        return _by_node(spec, devices)
    key = key.upper()
    found: list[BlockDevice] = []
    btrfs_fsids: set[str] = set()
    if key in ("LABEL", "UUID"):
        for dev in devices:
            ident = identify(_read_head(dev.node))
            if ident is None:
                continue
            have = ident.label if key == "LABEL" else ident.uuid
            if (have == value) if key == "LABEL" else (have.lower() == value.lower()):
                found.append(dev)
                btrfs_fsids.add(ident.uuid if ident.fs == "btrfs" else f"not btrfs: {dev.name}")
    elif key in ("PARTLABEL", "PARTUUID"):
        for disk in (d for d in devices if not d.is_partition):
            table = read_disk_gpt(disk.node)
            if table is None:
                continue
            for part in table.partitions:
                match = (
                    part.name == value
                    if key == "PARTLABEL"
                    else str(part.unique_guid).lower() == value.lower()
                )
                if match:
                    found.append(_partition(disk, part.number, devices))
    else:
        raise DeviceNotFoundError(
            f"device spec {spec!r}: expected /dev/..., LABEL=, UUID=, PARTLABEL= or PARTUUID="
        )
    if len(found) > 1 and len(btrfs_fsids) == 1:
        return found[0]  # the members of one multi-device btrfs: the reader finds the rest
    if len(found) > 1:
        # never "the first one wins": a USB stick labelled like the root disk would
        names = " and ".join(d.name for d in found)
        raise AmbiguousDeviceError(
            f"{spec!r} matches {names}: refusing to guess; give a unique label or a /dev name"
        )
    if found:
        return found[0]
    seen = ", ".join(d.name for d in devices) or "none"
    raise DeviceNotFoundError(f"no block device matches {spec!r} (devices seen: {seen})")


def _by_node(spec: str, devices: list[BlockDevice]) -> BlockDevice:
    name = spec.removeprefix("/dev/")
    for dev in devices:
        if dev.name == name:
            return dev
    seen = ", ".join(d.name for d in devices) or "none"
    raise DeviceNotFoundError(f"no block device {spec} (devices seen: {seen})")


def _partition(disk: BlockDevice, number: int, devices: list[BlockDevice]) -> BlockDevice:
    for dev in devices:
        if dev.disk == disk.name and dev.partition == number:
            return dev
    raise DeviceNotFoundError(
        f"{disk.name}: GPT lists partition {number} but the kernel has no device for it"
    )
