"""Kernel and initrd read from an ext4 filesystem in userland (docs/wire-formats.md §5.4).

Which files those are is ``guest.agent.disks.bootfiles`` (shared with the xfs/btrfs
reader); this module only reads ext4.

The ``ext4`` package reads inodes, extents and directories; it does not follow symlinks
in a path walk, and distributions make ``/boot/vmlinuz`` a symlink to ``vmlinuz-6.1...``
(sometimes an absolute one, sometimes relative, sometimes through a symlinked ``/boot``).
So the walk is ours: component by component, symlinks expanded against the directory
that holds them (absolute ones against the filesystem root). Nothing is mounted, so a
broken target disk can never hang the agent in the kernel.

Nor in Python: the disk is untrusted bytes, and the package trusts them (an extent index
that points at its own block made it walk forever, in PID 1). So before the package
builds an inode we walk its extent tree ourselves with caps (depth, nodes, each block
once, inside the device); a path walk has a symlink-hop cap, a step cap and a cap on
directory bytes read; the whole reader has a deadline; a kernel or initrd may not be
larger than ``MAX_BOOT_FILE``; and whatever the package raises becomes a ``DiskReadError``
that names the device and the path.
"""

from __future__ import annotations

import contextlib
import posixpath
import struct
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ext4

from guest.agent.disks.bootfiles import MAX_SYMLINK_HOPS, path_parts
from guest.agent.disks.bootfiles import MAX_WALK_STEPS as MAX_WALK_STEPS
from guest.agent.disks.bootfiles import BootFiles as BootFiles  # its home before disks/
from guest.agent.disks.bootfiles import DiskReadError as DiskReadError
from guest.agent.disks.bootfiles import NoSuchPathError as NoSuchPathError
from guest.agent.stage import MAX_BOOT_FILE, DeviceRuns, FileData

MAX_SYMLINK_BYTES = 4095  # PATH_MAX - 1, as the kernel allows
MAX_EXTENT_DEPTH = 5  # what the kernel's ext4 accepts
MAX_EXTENT_NODES = 4096
MAX_DIRECTORY_BYTES = 4 << 20
#: Directories are read through the package, whose block lookup scans every extent.
MAX_DIRECTORY_EXTENTS = 256
MAX_DIRECTORY_TOTAL = 64 << 20
#: The whole reader's time; checked between steps (caps bound what a step can cost).
WALK_SECONDS = 60.0
_CHUNK = 1 << 20
_ROOT_INODE = 2
_EXTENTS_FL = 0x80000
_EXTENT_MAGIC = 0xF30A
_NODE_HEAD = struct.Struct("<HHHH")  # magic, entries, max, depth (then a generation)
_I_FLAGS, _I_BLOCK, _I_BLOCK_SIZE = 0x20, 0x28, 60


class Ext4Reader:
    """Read-only access to one ext4 filesystem, with symlink-following paths."""

    def __init__(self, stream: BinaryIO, where: str, *, seconds: float = WALK_SECONDS) -> None:
        self.where = where
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._inodes: dict[int, Any] = {}
        self._extent_counts: dict[int, int] = {}
        self._dirs: dict[int, dict[bytes, int]] = {}
        self._directory_bytes = 0
        try:
            self.volume: Any = ext4.Volume(stream)
            self._device_size = int(stream.seek(0, 2))
        except Exception as exc:  # the package raises assorted types on a bad superblock
            raise DiskReadError(f"not a readable ext4 filesystem: {exc}", where=where) from exc

    @classmethod
    def open(cls, node: Path, *, seconds: float = WALK_SECONDS) -> Ext4Reader:
        try:
            stream = open(node, "rb", buffering=_CHUNK)  # noqa: SIM115 - lives with the reader
        except OSError as exc:
            raise DiskReadError(f"cannot open: {exc.strerror}", where=str(node)) from exc
        return cls(stream, str(node), seconds=seconds)

    def close(self) -> None:
        self.volume.stream.close()

    def __enter__(self) -> Ext4Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bounds --------------------------------------------------------------------------

    def _tick(self, where: str) -> None:
        if time.monotonic() >= self._deadline:
            raise DiskReadError(
                f"gave up after {self.seconds:g} s: the filesystem takes too long to walk",
                where=where,
            )

    @contextlib.contextmanager
    def _located(self, where: str) -> Iterator[None]:
        """Whatever the package raises on hostile bytes becomes an error naming the place."""
        try:
            yield
        except DiskReadError:
            raise
        except Exception as exc:
            raise DiskReadError(
                f"unreadable filesystem structure ({type(exc).__name__}: {exc})", where=where
            ) from exc

    def _inode(self, number: int, where: str) -> Any:
        """The package's inode, built only after its extent tree passed ``_check_tree``."""
        if number in self._inodes:
            return self._inodes[number]
        self._tick(where)
        count = int(self.volume.superblock.s_inodes_count)
        if not 1 <= number <= count:
            raise DiskReadError(f"inode {number} is outside 1..{count}", where=where)
        self.volume.seek(self.volume.inodes.offset(number))
        raw = self.volume.read(_I_BLOCK + _I_BLOCK_SIZE)
        if len(raw) < _I_BLOCK + _I_BLOCK_SIZE:
            raise DiskReadError(f"inode {number} lies past the end of the device", where=where)
        # the package walks the tree whenever the flag is set, inline data or not
        if int.from_bytes(raw[_I_FLAGS : _I_FLAGS + 4], "little") & _EXTENTS_FL:
            root = raw[_I_BLOCK:]
            self._extent_counts[number] = self._check_tree(root, f"{where} (inode {number})")
        inode = self.volume.inodes[number]
        self._inodes[number] = inode
        return inode

    def _check_tree(self, root: bytes, where: str) -> int:
        """Walk an extent tree as the package will, refusing what would not end: depth
        must fall by one per level (at most ``MAX_EXTENT_DEPTH``), each block is visited
        once and lies on the device, at most ``MAX_EXTENT_NODES`` nodes. Returns the
        number of extents (leaf entries)."""
        block = int(self.volume.block_size)
        blocks = (self._device_size - int(self.volume.offset)) // block
        seen: set[int] = set()
        pending: list[tuple[bytes, int | None, str]] = [(root, None, "the inode")]
        nodes = extents = 0
        while pending:
            data, expected, at = pending.pop()
            nodes += 1
            if nodes > MAX_EXTENT_NODES:
                raise DiskReadError(
                    f"extent tree of more than {MAX_EXTENT_NODES} nodes", where=where
                )
            self._tick(where)
            magic, entries, _max, depth = _NODE_HEAD.unpack_from(data)
            if magic != _EXTENT_MAGIC:
                raise DiskReadError(f"extent node in {at}: bad magic {magic:#06x}", where=where)
            if depth > MAX_EXTENT_DEPTH or (expected is not None and depth != expected):
                want = "" if expected is None else f", expected {expected}"
                raise DiskReadError(f"extent node in {at}: depth {depth}{want}", where=where)
            if 12 + 12 * entries > len(data):
                raise DiskReadError(f"extent node in {at}: {entries} entries overflow", where=where)
            if depth == 0:
                extents += entries
                continue
            for i in range(entries):
                lo, hi = struct.unpack_from("<IH", data, 12 + 12 * i + 4)
                leaf = hi << 32 | lo
                if leaf in seen or not 0 < leaf < blocks:
                    raise DiskReadError(
                        f"extent index {i} in {at} points at block {leaf} "
                        + ("again" if leaf in seen else f"(the device has {blocks})"),
                        where=where,
                    )
                seen.add(leaf)
                self.volume.seek(leaf * block)
                pending.append((self.volume.read(block), depth - 1, f"block {leaf}"))
        return extents

    def _entries(self, directory: Any, where: str) -> dict[bytes, int]:
        """A directory's names -> inode numbers, read once, within the directory caps."""
        number = int(directory.i_no)
        if number in self._dirs:
            return self._dirs[number]
        size = int(directory.i_size)
        if size > MAX_DIRECTORY_BYTES:
            raise DiskReadError(
                f"directory of {size} bytes (cap {MAX_DIRECTORY_BYTES})", where=where
            )
        if self._extent_counts.get(number, 0) > MAX_DIRECTORY_EXTENTS:
            raise DiskReadError(
                f"directory in more than {MAX_DIRECTORY_EXTENTS} extents", where=where
            )
        self._directory_bytes += size
        if self._directory_bytes > MAX_DIRECTORY_TOTAL:
            raise DiskReadError(
                f"walk read more than {MAX_DIRECTORY_TOTAL} directory bytes", where=where
            )
        names: dict[bytes, int] = {}
        for dirent, _ftype in directory.opendir():
            names.setdefault(bytes(dirent.name_bytes), int(dirent.inode))
        self._dirs[number] = names
        return names

    # -- paths -----------------------------------------------------------------------------

    def resolve(self, path: str) -> tuple[str, Any]:
        """Follow ``path`` to its final inode; returns the canonical path and the inode."""
        where = f"{self.where}:{path}"
        with self._located(where):
            return self._resolve(path, where)

    def _resolve(self, path: str, where: str) -> tuple[str, Any]:
        hops = steps = 0
        pending = deque(path_parts(path))
        root = self._inode(_ROOT_INODE, where)
        stack: list[tuple[str, Any]] = []  # (name, inode) from the root down
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
            if not isinstance(inode, ext4.Directory):
                raise NoSuchPathError(f"{here} is not a directory", where=where)
            number = self._entries(inode, where).get(name.encode(errors="surrogateescape"))
            if number is None:
                missing = posixpath.join(here, name)
                raise NoSuchPathError("no such file", where=f"{self.where}:{missing}")
            child = self._inode(number, where)
            if isinstance(child, ext4.SymbolicLink):
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

    def _readlink(self, link: Any, where: str) -> str:
        size = int(link.i_size)
        if size > MAX_SYMLINK_BYTES:
            raise DiskReadError(f"symlink target of {size} bytes", where=where)
        return bytes(link.readlink()).decode("utf-8", errors="surrogateescape")

    def listdir(self, path: str) -> list[str]:
        try:
            _canon, inode = self.resolve(path)
        except NoSuchPathError:
            return []
        if not isinstance(inode, ext4.Directory):
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
        """Where the file's bytes are on the device; its bytes when it is not in extents.

        Holes and extents never written become runs of zeros, as the kernel reads them.
        Inline data and block maps (old ext3-style files) are read through the package.
        A file larger than ``limit`` is refused before anything of it is read.
        """
        canon, inode = self.resolve(path)
        where = f"{self.where}:{canon}"
        if not isinstance(inode, ext4.File):
            raise DiskReadError("not a regular file", where=where)
        size = int(inode.i_size)
        if size > limit:
            raise DiskReadError(f"{size} bytes, more than the {limit} allowed", where=where)
        with self._located(where):
            runs = self._runs(inode, where)
            if runs is not None:
                return canon, DeviceRuns(Path(self.where), runs)
            data = self._read_stream(inode, where)
        if len(data) != size:
            raise DiskReadError(f"read {len(data)} of {size} bytes", where=where)
        return canon, data

    def _runs(self, inode: Any, where: str) -> tuple[tuple[int | None, int], ...] | None:
        extents = self._extent_map(inode)
        if extents is None:
            return None
        runs: list[tuple[int | None, int]] = []
        covered = 0
        for start, offset, length, initialised in [*extents, (int(inode.i_size), 0, 0, False)]:
            self._tick(where)
            if start > covered:
                runs.append((None, start - covered))  # a hole
            if not length:
                break
            if offset + length > self._device_size:
                raise DiskReadError(
                    f"extent at byte {offset} is past the end of the device", where=where
                )
            last = runs[-1] if runs else (None, 0)
            here = offset if initialised else None
            if here is not None and last[0] is not None and last[0] + last[1] == here:
                runs[-1] = (last[0], last[1] + length)
            else:
                runs.append((here, length))
            covered = start + length
        return tuple(runs)

    def _extent_map(self, inode: Any) -> list[tuple[int, int, int, bool]] | None:
        """(file offset, device offset, length, initialised) per extent, in file order and
        clipped to the file size; None for inline data or block maps."""
        if inode.is_inline or not inode.has_extents:
            return None
        size = int(inode.i_size)
        block = int(self.volume.block_size)
        out = []
        for extent in sorted(inode.extents, key=lambda e: int(e.ee_block)):
            start = int(extent.ee_block) * block
            if start >= size:
                break
            length = min(int(extent.len) * block, size - start)
            offset = int(self.volume.offset) + int(extent.ee_start) * block
            out.append((start, offset, length, bool(extent.is_initialized)))
        return out

    def _read_stream(self, inode: Any, where: str) -> bytes:
        stream = inode.open()
        out = bytearray()
        while len(out) <= int(inode.i_size) and (chunk := stream.read(_CHUNK)):
            self._tick(where)
            out += chunk
        return bytes(out)
