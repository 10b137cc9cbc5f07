"""Kernel and initrd read from an ext4 filesystem in userland (docs/wire-formats.md §5.4).

The ``ext4`` package reads inodes, extents and directories; it does not follow symlinks
in a path walk, and distributions make ``/boot/vmlinuz`` a symlink to ``vmlinuz-6.1...``
(sometimes an absolute one, sometimes relative, sometimes through a symlinked ``/boot``).
So the walk is ours: component by component, symlinks expanded against the directory
that holds them (absolute ones against the filesystem root), with a hop limit against
loops. Nothing is mounted, so a broken target disk can never hang the agent in the kernel.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ext4

from guest.agent.stage import DeviceRuns, FileData
from guest.contract.errors import CloudbootError

MAX_SYMLINK_HOPS = 40
KERNEL_PATTERNS = ("/boot/vmlinuz-*", "/boot/Image-*", "/vmlinuz-*", "/Image-*")
INITRD_PREFIXES = ("initrd.img-", "initramfs-", "initrd-", "initramfs.")
_CHUNK = 1 << 20


class DiskReadError(CloudbootError):
    pass


@dataclass(frozen=True)
class BootFiles:
    """What a disk target boots: the kernel, its initrd (may be absent), where they were.

    The contents are where they lie on the device when the file is plain extents (the
    usual case), so staging copies them without reading them into memory first.
    """

    kernel: FileData
    kernel_path: str
    initrd: FileData | None
    initrd_path: str | None


class Ext4Reader:
    """Read-only access to one ext4 filesystem, with symlink-following paths."""

    def __init__(self, stream: BinaryIO, where: str) -> None:
        self.where = where
        try:
            self.volume: Any = ext4.Volume(stream)
        except Exception as exc:  # the package raises assorted types on a bad superblock
            raise DiskReadError(f"not a readable ext4 filesystem: {exc}", where=where) from exc

    @classmethod
    def open(cls, node: Path) -> Ext4Reader:
        try:
            stream = open(node, "rb", buffering=_CHUNK)  # noqa: SIM115 - lives with the reader
        except OSError as exc:
            raise DiskReadError(f"cannot open: {exc.strerror}", where=str(node)) from exc
        return cls(stream, str(node))

    def close(self) -> None:
        self.volume.stream.close()

    def __enter__(self) -> Ext4Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _child(self, directory: Any, name: str) -> Any | None:
        for dirent, _ftype in directory.opendir():
            if dirent.name_bytes == name.encode():
                return self.volume.inodes[dirent.inode]
        return None

    def resolve(self, path: str) -> tuple[str, Any]:
        """Follow ``path`` to its final inode; returns the canonical path and the inode."""
        hops = 0
        pending = [p for p in path.split("/") if p not in ("", ".")]
        current: list[str] = []
        inode = self.volume.root
        while pending:
            name = pending.pop(0)
            if name == "..":
                current = current[:-1]
                inode = self._walk_plain(current)
                continue
            if not isinstance(inode, ext4.Directory):
                raise DiskReadError(
                    f"{'/' + '/'.join(current)} is not a directory", where=f"{self.where}:{path}"
                )
            child = self._child(inode, name)
            if child is None:
                missing = "/" + "/".join([*current, name])
                raise DiskReadError("no such file", where=f"{self.where}:{missing}")
            if isinstance(child, ext4.SymbolicLink):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise DiskReadError(
                        "too many levels of symbolic links", where=f"{self.where}:{path}"
                    )
                target = bytes(child.readlink()).decode("utf-8", errors="surrogateescape")
                if target.startswith("/"):
                    current, inode = [], self.volume.root
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                continue
            current.append(name)
            inode = child
        return "/" + "/".join(current), inode

    def _walk_plain(self, parts: list[str]) -> Any:
        inode = self.volume.root
        for name in parts:
            inode = self._child(inode, name)
        return inode

    def listdir(self, path: str) -> list[str]:
        try:
            _canon, inode = self.resolve(path)
        except DiskReadError:
            return []
        if not isinstance(inode, ext4.Directory):
            return []
        names = []
        for dirent, _ftype in inode.opendir():
            name = bytes(dirent.name_bytes).decode("utf-8", errors="surrogateescape")
            if name not in (".", ".."):
                names.append(name)
        return names

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except DiskReadError:
            return False
        return True

    def read(self, path: str) -> tuple[str, bytes]:
        """Whole file contents (and its canonical path)."""
        canon, data = self.locate(path)
        return canon, data.read() if isinstance(data, DeviceRuns) else data

    def locate(self, path: str) -> tuple[str, FileData]:
        """Where the file's bytes are on the device; its bytes when it is not in extents.

        Holes and extents never written become runs of zeros, as the kernel reads them.
        Inline data and block maps (old ext3-style files) are read through the package.
        """
        canon, inode = self.resolve(path)
        if not isinstance(inode, ext4.File):
            raise DiskReadError("not a regular file", where=f"{self.where}:{canon}")
        runs = self._runs(inode, canon)
        if runs is not None:
            return canon, DeviceRuns(Path(self.where), runs)
        data = self._read_stream(inode)
        if len(data) != inode.i_size:
            raise DiskReadError(
                f"read {len(data)} of {inode.i_size} bytes", where=f"{self.where}:{canon}"
            )
        return canon, data

    def _runs(self, inode: Any, canon: str) -> tuple[tuple[int | None, int], ...] | None:
        extents = self._extent_map(inode)
        if extents is None:
            return None
        device_size = self.volume.stream.seek(0, 2)
        runs: list[tuple[int | None, int]] = []
        covered = 0
        for start, offset, length, initialised in [*extents, (int(inode.i_size), 0, 0, False)]:
            if start > covered:
                runs.append((None, start - covered))  # a hole
            if not length:
                break
            if offset + length > device_size:
                raise DiskReadError(
                    f"extent at byte {offset} is past the end of the device",
                    where=f"{self.where}:{canon}",
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

    def _read_stream(self, inode: Any) -> bytes:
        stream = inode.open()
        out = bytearray()
        while chunk := stream.read(_CHUNK):
            out += chunk
        return bytes(out)


def default_kernel(reader: Ext4Reader) -> str:
    """Lexicographically largest match of the first pattern that matches anything."""
    for pattern in KERNEL_PATTERNS:
        directory, glob = posixpath.split(pattern)
        matches = sorted(n for n in reader.listdir(directory) if fnmatch.fnmatchcase(n, glob))
        if matches:
            return posixpath.join(directory, matches[-1])
    raise DiskReadError(
        "no kernel found (looked for " + ", ".join(KERNEL_PATTERNS) + ")", where=reader.where
    )


def paired_initrd(reader: Ext4Reader, kernel_path: str) -> str | None:
    """``initrd.img-<suffix>`` (then initramfs-, initrd-, initramfs.) next to the kernel."""
    directory, name = posixpath.split(kernel_path)
    for prefix in ("vmlinuz-", "Image-", "vmlinux-"):
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            break
    else:
        return None
    for initrd_prefix in INITRD_PREFIXES:
        candidate = posixpath.join(directory, initrd_prefix + suffix)
        if reader.exists(candidate):
            return candidate
    return None


def read_boot_files(reader: Ext4Reader, kernel: str = "", initrd: str = "") -> BootFiles:
    """The kernel (given or default) and its initrd (given or paired with the kernel)."""
    kernel_path = kernel or default_kernel(reader)
    canon_kernel, kernel_data = reader.locate(kernel_path)
    initrd_path = initrd or paired_initrd(reader, canon_kernel)
    if initrd_path is None:
        return BootFiles(kernel_data, canon_kernel, None, None)
    canon_initrd, initrd_data = reader.locate(initrd_path)
    return BootFiles(kernel_data, canon_kernel, initrd_data, canon_initrd)
