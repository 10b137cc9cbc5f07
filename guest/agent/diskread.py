"""Kernel and initrd read from an ext4 filesystem in userland (docs/wire-formats.md §5.4).

Which files those are is ``guest.agent.disks.bootfiles`` (shared with the xfs/btrfs
reader); this module only reads ext4, through the structures of ``guest.contract.extfs``.
Nothing is mounted, so a broken target disk can never hang the agent in the kernel.

The path walk is component by component, symlinks expanded against the directory that
holds them (absolute ones against the filesystem root): distributions make
``/boot/vmlinuz`` a symlink to ``vmlinuz-6.1...``, sometimes absolute, sometimes
relative, sometimes through a symlinked ``/boot``.

The disk is untrusted bytes, and a reader that trusts them can be made to walk forever
in PID 1 (an extent index pointing at its own block did that to the PyPI ``ext4``
package this module used before). So every walk is capped: extent trees (depth falls by
one per level, each block once, inside the device, a node count), block maps (each
pointer block once, a block count), a symlink-hop cap, a step cap and caps on directory
bytes read; the whole reader has a deadline; a kernel or initrd may not be larger than
``MAX_BOOT_FILE``; and every malformed structure becomes a ``DiskReadError`` that names
the device and the path.

Our own reader, not the package: it imported in 0.33 s under TCG on every disk boot
(ctypes structure classes, typing_extensions, crcmod, cachetools), a third of the read
step; this module and ``extfs`` import in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from guest.agent.disks.bootfiles import (
    MAX_SYMLINK_HOPS,
    MAX_WALK_STEPS as MAX_WALK_STEPS,
    BootFiles as BootFiles,  # its home before disks/
    DiskReadError as DiskReadError,
    NoSuchPathError as NoSuchPathError,
    path_parts,
)
from guest.agent.stage import MAX_BOOT_FILE, DeviceRuns, FileData
from guest.contract import extfs
from guest.contract.errors import FormatError

MAX_SYMLINK_BYTES = 4095  # PATH_MAX - 1, as the kernel allows
MAX_EXTENT_DEPTH = 5  # what the kernel's ext4 accepts
MAX_EXTENT_NODES = 4096
#: Pointer blocks of one block-mapped (ext2/3-style) file: 16 GiB of 4 KiB blocks.
MAX_MAP_BLOCKS = 4096
MAX_DIRECTORY_BYTES = 4 << 20
MAX_DIRECTORY_EXTENTS = 256
MAX_DIRECTORY_TOTAL = 64 << 20
#: The whole reader's time; checked between steps (caps bound what a step can cost).
WALK_SECONDS = 60.0
_CHUNK = 1 << 20

#: (file offset, device offset or None for zeros, length), in file order.
Piece = tuple[int, int | None, int]


class Ext4Reader:
    """Read-only access to one ext4 filesystem, with symlink-following paths."""

    def __init__(self, stream: BinaryIO, where: str, *, seconds: float = WALK_SECONDS) -> None:
        self.where = where
        self.seconds = seconds
        self.stream = stream
        self._deadline = time.monotonic() + seconds
        self._inodes: dict[int, extfs.Inode] = {}
        self._dirs: dict[int, dict[bytes, int]] = {}
        self._directory_bytes = 0
        try:
            self._device_size = int(stream.seek(0, 2))
            self.sb = extfs.Superblock.from_bytes(
                self._pread(extfs.SUPERBLOCK_OFFSET, extfs.SUPERBLOCK_SIZE)
            )
        except (FormatError, OSError) as exc:
            raise DiskReadError(f"not a readable ext4 filesystem: {exc}", where=where) from exc
        self._blocks = min(self._device_size // self.sb.block_size, self.sb.blocks_count)
        self._filetype = bool(self.sb.incompat & extfs.INCOMPAT_FILETYPE)

    @classmethod
    def open(cls, node: Path, *, seconds: float = WALK_SECONDS) -> Ext4Reader:
        try:
            stream = open(node, "rb", buffering=_CHUNK)  # noqa: SIM115 - lives with the reader
        except OSError as exc:
            raise DiskReadError(f"cannot open: {exc.strerror}", where=str(node)) from exc
        return cls(stream, str(node), seconds=seconds)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Ext4Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bounds ----------------------------------------------------------------------------

    def _pread(self, offset: int, length: int) -> bytes:
        self.stream.seek(offset)
        data = self.stream.read(length)
        if len(data) != length:
            raise FormatError(f"{length} bytes lie past the end of the device", offset=offset,
                              what="ext4")  # fmt: skip
        return data

    def _block(self, number: int, where: str) -> bytes:
        if not 0 < number < self._blocks:
            raise DiskReadError(f"block {number} is outside the filesystem", where=where)
        return self._pread(number * self.sb.block_size, self.sb.block_size)

    def _tick(self, where: str) -> None:
        if time.monotonic() >= self._deadline:
            raise DiskReadError(
                f"gave up after {self.seconds:g} s: the filesystem takes too long to walk",
                where=where,
            )

    @contextlib.contextmanager
    def _located(self, where: str) -> Iterator[None]:
        """A malformed structure (or a device error) becomes an error naming the place."""
        try:
            yield
        except (FormatError, OSError) as exc:
            raise DiskReadError(f"unreadable filesystem structure ({exc})", where=where) from exc

    def _inode(self, number: int, where: str) -> extfs.Inode:
        if number in self._inodes:
            return self._inodes[number]
        self._tick(where)
        if not 1 <= number <= self.sb.inodes_count:
            raise DiskReadError(f"inode {number} is outside 1..{self.sb.inodes_count}", where=where)
        group, index = self.sb.inode_location(number)
        descriptor = self._pread(self.sb.descriptor_offset(group), self.sb.desc_size)
        table = extfs.inode_table_block(descriptor, self.sb.desc_size)
        offset = table * self.sb.block_size + index * self.sb.inode_size
        inode = extfs.Inode.from_bytes(number, self._pread(offset, min(self.sb.inode_size, 256)))
        if inode.flags & (extfs.INLINE_DATA_FL | extfs.ENCRYPT_FL):
            what = "inline data" if inode.flags & extfs.INLINE_DATA_FL else "encrypted"
            raise DiskReadError(f"inode {number}: {what}, which this reader does not read",
                                where=where)  # fmt: skip
        self._inodes[number] = inode
        return inode

    # -- where a file's bytes are ----------------------------------------------------------

    def _pieces(self, inode: extfs.Inode, where: str) -> list[Piece]:
        """The file's bytes as pieces on the device (extent tree or block map), clipped
        to its size, holes and unwritten extents as zeros."""
        block = self.sb.block_size
        if inode.flags & extfs.EXTENTS_FL:
            mapped = [(e.logical, e.physical if e.initialised else None, e.length)
                      for e in self._extents(inode, where)]  # fmt: skip
        else:
            mapped = self._block_map(inode, where)
        pieces: list[Piece] = []
        covered = 0
        for logical, physical, count in sorted(mapped, key=lambda m: m[0]):
            start = logical * block
            if start >= inode.size:
                break
            if start < covered:
                raise DiskReadError(f"inode {inode.number}: extents overlap", where=where)
            if start > covered:
                pieces.append((covered, None, start - covered))
            length = min(count * block, inode.size - start)
            if physical is not None and (physical == 0 or physical + count > self._blocks):
                raise DiskReadError(
                    f"extent at block {physical} is past the end of the device", where=where
                )
            pieces.append((start, None if physical is None else physical * block, length))
            covered = start + length
        if covered < inode.size:
            pieces.append((covered, None, inode.size - covered))
        return pieces

    def _extents(self, inode: extfs.Inode, where: str) -> list[extfs.Extent]:
        """The leaves of the extent tree, walked so that it must end: depth falls by one
        per level (at most ``MAX_EXTENT_DEPTH``), each block visited once and inside the
        device, at most ``MAX_EXTENT_NODES`` nodes."""
        at = f"{where} (inode {inode.number})"
        seen: set[int] = set()
        pending: list[tuple[bytes, int | None, str]] = [(inode.block, None, "the inode")]
        extents: list[extfs.Extent] = []
        nodes = 0
        while pending:
            data, expected, source = pending.pop()
            nodes += 1
            if nodes > MAX_EXTENT_NODES:
                raise DiskReadError(f"extent tree of more than {MAX_EXTENT_NODES} nodes", where=at)
            self._tick(at)
            try:
                node = extfs.extent_node(data)
            except FormatError as exc:
                raise DiskReadError(f"extent node in {source}: {exc}", where=at) from exc
            if node.depth > MAX_EXTENT_DEPTH or (expected is not None and node.depth != expected):
                want = "" if expected is None else f", expected {expected}"
                raise DiskReadError(f"extent node in {source}: depth {node.depth}{want}", where=at)
            extents += node.extents
            for i, child in enumerate(node.children):
                if child in seen or not 0 < child < self._blocks:
                    raise DiskReadError(
                        f"extent index {i} in {source} points at block {child} "
                        + ("again" if child in seen else f"(the device has {self._blocks})"),
                        where=at,
                    )
                seen.add(child)
                pending.append((self._block(child, at), node.depth - 1, f"block {child}"))
        return extents

    def _block_map(self, inode: extfs.Inode, where: str) -> list[tuple[int, int | None, int]]:
        """An ext2/3-style file: 12 direct pointers, then single, double and triple
        indirect blocks; each pointer block read once, at most ``MAX_MAP_BLOCKS``."""
        per_block = self.sb.block_size // 4
        wanted = -(-inode.size // self.sb.block_size)
        pointers = extfs.block_pointers(inode.block)
        mapped: list[tuple[int, int | None, int]] = []
        seen: set[int] = set()

        def walk(number: int, level: int, logical: int) -> None:
            if logical >= wanted or not number:
                return  # past the end, or a hole (zeros)
            if level == 0:
                mapped.append((logical, number, 1))
                return
            if number in seen or len(seen) >= MAX_MAP_BLOCKS:
                raise DiskReadError(f"inode {inode.number}: block map revisits or exceeds "
                                    f"{MAX_MAP_BLOCKS} pointer blocks", where=where)  # fmt: skip
            seen.add(number)
            self._tick(where)
            span = per_block ** (level - 1)
            for i, child in enumerate(extfs.block_pointers(self._block(number, where))):
                walk(child, level - 1, logical + i * span)

        for i, number in enumerate(pointers[: extfs.DIRECT_BLOCKS]):
            walk(number, 0, i)
        logical = extfs.DIRECT_BLOCKS
        for level, number in enumerate(pointers[extfs.DIRECT_BLOCKS :], start=1):
            walk(number, level, logical)
            logical += per_block**level
        return mapped

    def _bytes(
        self, inode: extfs.Inode, where: str, cap: int, pieces: list[Piece] | None = None
    ) -> bytes:
        """A small file's (directory's, symlink's) whole contents."""
        if inode.size > cap:
            raise DiskReadError(f"{inode.size} bytes (cap {cap})", where=where)
        out = bytearray()
        for _start, offset, length in pieces or self._pieces(inode, where):
            out += bytes(length) if offset is None else self._pread(offset, length)
        return bytes(out)

    # -- directories and paths -------------------------------------------------------------

    def _entries(self, directory: extfs.Inode, where: str) -> dict[bytes, int]:
        """A directory's names -> inode numbers, read once, within the directory caps."""
        number = directory.number
        if number in self._dirs:
            return self._dirs[number]
        if directory.size > MAX_DIRECTORY_BYTES:
            raise DiskReadError(
                f"directory of {directory.size} bytes (cap {MAX_DIRECTORY_BYTES})", where=where
            )
        pieces = self._pieces(directory, where)
        if len(pieces) > MAX_DIRECTORY_EXTENTS:
            raise DiskReadError(
                f"directory in more than {MAX_DIRECTORY_EXTENTS} extents", where=where
            )
        self._directory_bytes += directory.size
        if self._directory_bytes > MAX_DIRECTORY_TOTAL:
            raise DiskReadError(
                f"walk read more than {MAX_DIRECTORY_TOTAL} directory bytes", where=where
            )
        data = self._bytes(directory, where, MAX_DIRECTORY_BYTES, pieces)
        names: dict[bytes, int] = {}
        size = self.sb.block_size
        for start in range(0, len(data), size):
            for name, child in extfs.dirents(data[start : start + size], self._filetype):
                names.setdefault(name, child)
        self._dirs[number] = names
        return names

    def resolve(self, path: str) -> tuple[str, extfs.Inode]:
        """Follow ``path`` to its final inode; returns the canonical path and the inode."""
        where = f"{self.where}:{path}"
        with self._located(where):
            return self._resolve(path, where)

    def _resolve(self, path: str, where: str) -> tuple[str, extfs.Inode]:
        hops = steps = 0
        pending = deque(path_parts(path))
        root = self._inode(extfs.ROOT_INODE, where)
        stack: list[tuple[str, extfs.Inode]] = []  # (name, inode) from the root down
        while pending:
            steps += 1
            if steps > MAX_WALK_STEPS:
                raise DiskReadError(f"path walk longer than {MAX_WALK_STEPS} steps", where=where)
            self._tick(where)
            name = pending.popleft()
            if name == "..":
                stack = stack[:-1]
                continue
            inode = stack[-1][1] if stack else root
            here = "/" + "/".join(n for n, _ in stack)
            if not inode.is_dir:
                raise NoSuchPathError(f"{here} is not a directory", where=where)
            number = self._entries(inode, where).get(name.encode(errors="surrogateescape"))
            if number is None:
                missing = posixpath.join(here, name)
                raise NoSuchPathError("no such file", where=f"{self.where}:{missing}")
            child = self._inode(number, where)
            if child.is_symlink:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise DiskReadError("too many levels of symbolic links", where=where)
                target = self._readlink(child, where)
                if target.startswith("/"):
                    stack = []
                pending.extendleft(reversed(path_parts(target)))
                continue
            stack.append((name, child))
        return "/" + "/".join(n for n, _ in stack), stack[-1][1] if stack else root

    def _readlink(self, link: extfs.Inode, where: str) -> str:
        if link.size > MAX_SYMLINK_BYTES:
            raise DiskReadError(f"symlink target of {link.size} bytes", where=where)
        target = link.fast_symlink
        if target is None:
            target = self._bytes(link, where, MAX_SYMLINK_BYTES)
        return target.decode("utf-8", errors="surrogateescape")

    def listdir(self, path: str) -> list[str]:
        try:
            _canon, inode = self.resolve(path)
        except NoSuchPathError:
            return []
        if not inode.is_dir:
            return []
        where = f"{self.where}:{path}"
        with self._located(where):
            names = self._entries(inode, where)
        return [
            n.decode("utf-8", errors="surrogateescape") for n in names if n not in (b".", b"..")
        ]

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except NoSuchPathError:
            return False
        return True

    # -- contents --------------------------------------------------------------------------

    def read(self, path: str) -> tuple[str, bytes]:
        """Whole file contents (and its canonical path)."""
        canon, data = self.locate(path)
        return canon, data.read() if isinstance(data, DeviceRuns) else data

    def locate(self, path: str, *, limit: int = MAX_BOOT_FILE) -> tuple[str, FileData]:
        """Where the file's bytes are on the device, as runs staging copies without
        reading them; holes and extents never written become runs of zeros, as the
        kernel reads them. A file larger than ``limit`` is refused before anything of it
        is read."""
        canon, inode = self.resolve(path)
        where = f"{self.where}:{canon}"
        if not inode.is_file:
            raise DiskReadError("not a regular file", where=where)
        if inode.size > limit:
            raise DiskReadError(f"{inode.size} bytes, more than the {limit} allowed", where=where)
        with self._located(where):
            pieces = self._pieces(inode, where)
        runs: list[tuple[int | None, int]] = []
        for _start, offset, length in pieces:
            last = runs[-1] if runs else (None, 0)
            if offset is not None and last[0] is not None and last[0] + last[1] == offset:
                runs[-1] = (last[0], last[1] + length)
            else:
                runs.append((offset, length))
        return canon, DeviceRuns(Path(self.where), tuple(runs))
