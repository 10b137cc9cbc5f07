"""The initramfs: a newc ("070701") cpio archive, optionally gzip-, zstd- or LZ4-compressed.

The kernel unpacks it into rootfs before running ``/init``. The archive is declared as a
list of entries (files, directories, symlinks, device nodes) and serialised sorted by
path with one fixed mtime, so the same declaration always gives the same bytes: a
precondition for a reproducible boot.iso.
"""

from __future__ import annotations

import enum
import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from guest.contract.errors import CloudbootError
from publisher.media import lz4legacy
from publisher.run import require_tool, run

TRAILER = "TRAILER!!!"


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    LZ4 = "lz4"  # the kernel's legacy framing (publisher/media/lz4legacy.py)


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is absolute inside the archive (``/etc/cosign.pub``)."""

    path: str
    mode: int  # full st_mode: file type bits + permissions
    data: bytes = b""  # file contents, or the symlink target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    @property
    def name(self) -> str:
        """The name as stored: relative, no leading slash (``etc/cosign.pub``)."""
        return str(PurePosixPath(self.path)).lstrip("/") or "."


def _normalise(path: str) -> str:
    clean = PurePosixPath("/" + path.lstrip("/"))
    if ".." in clean.parts:
        raise CloudbootError(f"initramfs path must not contain '..': {path}")
    return str(clean)


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(_normalise(path), stat.S_IFREG | mode, data)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(_normalise(path), stat.S_IFDIR | mode)


def symlink(path: str, target: str) -> Entry:
    return Entry(_normalise(path), stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(_normalise(path), stat.S_IFCHR | mode, rdev=(major, minor))


def block_device(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(_normalise(path), stat.S_IFBLK | mode, rdev=(major, minor))


def tree(source: Path, dest: str = "/", *, normal_modes: bool = False) -> list[Entry]:
    """Every directory, file and symlink under ``source``, placed under ``dest``.

    Modes are kept (an executable stays executable); owners and times are not, they are
    fixed at archive time. This is how a whole runtime (e.g. a Python stdlib) is added.
    ``normal_modes``: directories 0755, files 0755 if their owner may execute them else
    0644, for a tree made in a temporary directory, whose modes carry the umask of the
    process that made it (which must not change the image's bytes).
    """
    if not source.is_dir():
        raise CloudbootError(f"initramfs tree source is not a directory: {source}")
    entries = []
    for path in sorted(source.rglob("*")):
        target = str(PurePosixPath(dest) / path.relative_to(source).as_posix())
        st = path.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if normal_modes:
            perm = 0o755 if stat.S_ISDIR(st.st_mode) or perm & stat.S_IXUSR else 0o644
        if stat.S_ISLNK(st.st_mode):
            entries.append(symlink(target, str(path.readlink())))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(directory(target, perm))
        elif stat.S_ISREG(st.st_mode):
            entries.append(file(target, path.read_bytes(), perm))
        else:
            raise CloudbootError(f"unsupported file type in initramfs tree: {path}")
    return entries


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Add the missing parent directories (0755); a later entry for a path replaces an earlier."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        by_path[entry.path] = entry
    for path in list(by_path):
        for parent in PurePosixPath(path).parents:
            if str(parent) != "/" and str(parent) not in by_path:
                by_path[str(parent)] = directory(str(parent))
    return [by_path[p] for p in sorted(by_path)]


def _header(ino: int, entry: Entry, mtime: int, size: int, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, *entry.rdev, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return bytes(-n % 4)


def newc(entries: Iterable[Entry], *, mtime: int = 0) -> bytes:
    """Serialise entries (parents added, sorted by path) as a newc archive with its trailer."""
    out = bytearray()
    members = [*with_parents(entries), Entry("/" + TRAILER, 0)]
    for ino, entry in enumerate(members, start=1):
        name = entry.name.encode()
        is_trailer = entry.name == TRAILER
        data = entry.data if not stat.S_ISDIR(entry.mode) else b""
        header = _header(0 if is_trailer else ino, entry, 0 if is_trailer else mtime, len(data),
                         name)  # fmt: skip
        out += header + name + b"\0"
        out += _pad4(len(header) + len(name) + 1)
        out += data + _pad4(len(data))
    return bytes(out)


def parse_newc(data: bytes) -> list[Entry]:
    """Read a newc archive back (for tests and for ``cloudboot build --inspect``-style checks)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise CloudbootError(f"initramfs: no newc magic at byte {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == TRAILER:
            return entries
        entries.append(Entry("/" + name.lstrip("/"), mode, body, (rmaj, rmin)))


def compress(data: bytes, how: Compression, *, level: int = 6) -> bytes:
    """Compress deterministically (gzip without a timestamp; zstd through the CLI; LZ4
    in-process, high-compression at ``level`` less two: 4 by default, where level 9 costs
    twice the time for 2% less)."""
    if how is Compression.NONE:
        return data
    if how is Compression.GZIP:
        return gzip.compress(data, compresslevel=level, mtime=0)
    if how is Compression.LZ4:
        return lz4legacy.compress(data, max(1, min(level - 2, 12)))
    zstd = require_tool("zstd", "zstd")
    return run([zstd, "-q", "-c", f"-{min(level, 19)}"], input=data).stdout


def decompress(data: bytes) -> bytes:
    """Undo ``compress`` by magic number (tests and inspection)."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return run([require_tool("zstd", "zstd"), "-q", "-d", "-c"], input=data).stdout
    if data[:4] == lz4legacy.MAGIC:
        return lz4legacy.decompress(data)
    return data
