"""ext4's on-disk structures, as far as reading a kernel needs them (docs/wire-formats.md
§5.4): the superblock, group descriptors, inodes, extent-tree nodes, block-map pointers
and directory entries. Pure: bytes in, values out; every structure is checked against the
bytes it came from and a bad one is a ``FormatError`` with its offset. The walk over them
(and its caps: the disk is untrusted) is ``guest.agent.diskread``.

Field offsets are those of the kernel's ``fs/ext4/ext4.h``; only the fields a read needs
are decoded. What this reader cannot read is refused by name rather than misread:
inline data, encrypted inodes, and the incompat features that change layout beyond that.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from guest.contract.errors import FormatError

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
MAGIC = 0xEF53
ROOT_INODE = 2

INCOMPAT_FILETYPE = 0x2
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
#: What a read can ignore: compression (0x1, never used), filetype, recover (a journal
#: to replay: we read what is written, as ``debugfs`` does), journal_dev is refused below,
#: meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, csum_seed, largedir, inline_data
#: (per inode, refused there), encrypt (per inode, refused there), casefold.
INCOMPAT_READABLE = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000
INCOMPAT_READABLE |= 0x8000 | 0x10000 | 0x20000
RO_COMPAT_SPARSE_SUPER = 0x1

EXTENTS_FL = 0x80000
INLINE_DATA_FL = 0x10000000
ENCRYPT_FL = 0x800
EXTENT_MAGIC = 0xF30A
#: i_block: 60 bytes, the extent-tree root or 15 block pointers (12 direct, 3 indirect).
I_BLOCK_SIZE = 60
DIRECT_BLOCKS = 12


@dataclass(frozen=True)
class Superblock:
    """The superblock's geometry and features."""

    inodes_count: int
    blocks_count: int
    first_data_block: int
    block_size: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    incompat: int
    ro_compat: int
    first_meta_bg: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Superblock:
        """The superblock from its 1024 bytes (the device's bytes 1024..2047)."""
        if len(data) < SUPERBLOCK_SIZE:
            raise FormatError("superblock cut short", offset=SUPERBLOCK_OFFSET, what="ext4")
        inodes, blocks_lo, _r, _fb, _fi, first_data, log_block = struct.unpack_from("<7I", data)
        blocks_per_group, _frags, inodes_per_group = struct.unpack_from("<3I", data, 0x20)
        (magic,) = struct.unpack_from("<H", data, 0x38)
        if magic != MAGIC:
            raise FormatError(f"bad magic {magic:#06x}", offset=SUPERBLOCK_OFFSET + 0x38,
                              what="ext4 superblock")  # fmt: skip
        (rev,) = struct.unpack_from("<I", data, 0x4C)
        (inode_size,) = struct.unpack_from("<H", data, 0x58) if rev else (128,)
        _compat, incompat, ro_compat = struct.unpack_from("<3I", data, 0x5C)
        (desc_size,) = struct.unpack_from("<H", data, 0xFE)
        (first_meta_bg,) = struct.unpack_from("<I", data, 0x104)
        (blocks_hi,) = struct.unpack_from("<I", data, 0x150)
        wide = bool(incompat & INCOMPAT_64BIT)
        sb = cls(
            inodes_count=inodes,
            blocks_count=blocks_lo | (blocks_hi << 32 if wide else 0),
            first_data_block=first_data,
            block_size=1024 << log_block if log_block <= 6 else 0,
            blocks_per_group=blocks_per_group,
            inodes_per_group=inodes_per_group,
            inode_size=inode_size,
            desc_size=desc_size if wide else 32,
            incompat=incompat,
            ro_compat=ro_compat,
            first_meta_bg=first_meta_bg,
        )
        sb._check()
        return sb

    def _check(self) -> None:
        problem = None
        if not self.block_size:
            problem = "block size beyond 64 KiB"
        elif not 128 <= self.inode_size <= self.block_size or self.inode_size & (
            self.inode_size - 1
        ):
            problem = f"inode size {self.inode_size}"
        elif not 32 <= self.desc_size <= 1024 or self.desc_size & (self.desc_size - 1):
            problem = f"group descriptor size {self.desc_size}"
        elif not self.inodes_per_group or not self.blocks_per_group:
            problem = "zero inodes or blocks per group"
        elif unknown := self.incompat & ~INCOMPAT_READABLE:
            problem = f"incompatible features {unknown:#x} this reader does not know"
        if problem:
            raise FormatError(problem, offset=SUPERBLOCK_OFFSET, what="ext4 superblock")

    def descriptor_offset(self, group: int) -> int:
        """Where group ``group``'s descriptor lies (meta_bg moves them into the groups)."""
        per_block = self.block_size // self.desc_size
        meta = group // per_block
        if self.incompat & INCOMPAT_META_BG and meta >= self.first_meta_bg:
            first = meta * per_block
            block = self.first_data_block + first * self.blocks_per_group
            block += 1 if self._has_super(first) else 0
        else:
            block = self.first_data_block + 1 + meta
        return block * self.block_size + (group % per_block) * self.desc_size

    def _has_super(self, group: int) -> bool:
        if group <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def inode_location(self, number: int) -> tuple[int, int]:
        """(group, index within its inode table) of inode ``number`` (from 1)."""
        return divmod(number - 1, self.inodes_per_group)


def inode_table_block(descriptor: bytes, desc_size: int) -> int:
    """bg_inode_table from a group descriptor (its high half only in 64-byte ones)."""
    (lo,) = struct.unpack_from("<I", descriptor, 0x8)
    hi = struct.unpack_from("<I", descriptor, 0x28)[0] if desc_size >= 64 else 0
    return int(hi) << 32 | int(lo)


@dataclass(frozen=True)
class Inode:
    """The fields of an inode a read needs."""

    number: int
    mode: int
    size: int
    flags: int
    block: bytes  # i_block, 60 bytes

    @classmethod
    def from_bytes(cls, number: int, raw: bytes) -> Inode:
        if len(raw) < 0x70:
            raise FormatError(f"inode {number} cut short", offset=0, what="ext4 inode")
        (mode,) = struct.unpack_from("<H", raw, 0)
        (size_lo,) = struct.unpack_from("<I", raw, 0x4)
        (flags,) = struct.unpack_from("<I", raw, 0x20)
        (size_hi,) = struct.unpack_from("<I", raw, 0x6C)
        return cls(number, mode, size_hi << 32 | size_lo, flags, raw[0x28 : 0x28 + I_BLOCK_SIZE])

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def fast_symlink(self) -> bytes | None:
        """A symlink's target kept in i_block itself (under 60 bytes, no blocks)."""
        if not self.is_symlink or self.flags & (EXTENTS_FL | INLINE_DATA_FL):
            return None
        return self.block[: self.size] if self.size < I_BLOCK_SIZE else None


@dataclass(frozen=True)
class Extent:
    """A leaf entry: ``length`` blocks from file block ``logical`` at device block
    ``physical``; not ``initialised`` (preallocated) ones read as zeros."""

    logical: int
    physical: int
    length: int
    initialised: bool


@dataclass(frozen=True)
class ExtentNode:
    """An extent-tree node: leaf extents (depth 0) or child blocks (index entries)."""

    depth: int
    extents: tuple[Extent, ...]
    children: tuple[int, ...]


_NODE_HEAD = struct.Struct("<HHHH")


def extent_node(data: bytes) -> ExtentNode:
    """A node (the 60-byte root in i_block, or a whole tree block)."""
    if len(data) < 12:
        raise FormatError("extent node cut short", offset=0, what="extent node")
    magic, entries, _max, depth = _NODE_HEAD.unpack_from(data)
    if magic != EXTENT_MAGIC:
        raise FormatError(f"bad magic {magic:#06x}", offset=0, what="extent node")
    if 12 + 12 * entries > len(data):
        raise FormatError(f"{entries} entries overflow", offset=2, what="extent node")
    extents: list[Extent] = []
    children: list[int] = []
    for i in range(entries):
        at = 12 + 12 * i
        if depth == 0:
            logical, length, hi, lo = struct.unpack_from("<IHHI", data, at)
            initialised = length <= 32768
            extents.append(Extent(logical, hi << 32 | lo, length - (0 if initialised else 32768),
                                  initialised))  # fmt: skip
        else:
            _logical, lo, hi = struct.unpack_from("<IIH", data, at)
            children.append(hi << 32 | lo)
    return ExtentNode(depth, tuple(extents), tuple(children))


def block_pointers(data: bytes) -> tuple[int, ...]:
    """The little-endian u32 block numbers of i_block or of an indirect block."""
    return struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4])


def dirents(block: bytes, filetype: bool) -> Iterator[tuple[bytes, int]]:
    """(name, inode) of each live entry in one directory block.

    Entries with inode 0 are skipped: deleted ones, the checksum tail of metadata_csum,
    and the fake entries an htree index node hides behind, so an indexed directory reads
    as a linear one (how ext4 keeps the htree readable by old code).
    """
    pos = 0
    while pos + 8 <= len(block):
        inode, rec_len, name_len, file_type = struct.unpack_from("<IHBB", block, pos)
        if not filetype:
            name_len |= file_type << 8
        if rec_len < 8 or rec_len % 4 or pos + rec_len > len(block) or 8 + name_len > rec_len:
            raise FormatError(f"entry of length {rec_len} for a {name_len}-byte name",
                              offset=pos, what="directory block")  # fmt: skip
        if inode and filetype and file_type > 7:
            raise FormatError(f"unknown file type {file_type}", offset=pos + 7,
                              what="directory block")  # fmt: skip
        if inode:
            yield block[pos + 8 : pos + 8 + name_len], inode
        pos += rec_len
