"""Replacing a file atomically: the one helper both sides use (stdlib only).

Readers see the old file or the new one, never a mix: the bytes go to a temporary name in
the same directory, which is renamed over the target. Whether they also survive a power
cut is the caller's choice, made per kind of file:

- ``durable=True`` fsyncs the file before the rename and the directory after it. For what
  a crash must not lose or leave half-made: signing keys, boot.iso and its signature, the
  cache disk, NVRAM variable stores, and the kernel files the guest stages on the ESP
  (a Boot0001 must never point at a file whose bytes are still in the page cache).
- ``durable=False`` (the default) skips both fsyncs. For state that is rewritten all the
  time and is fine to lose: the watcher's status file, vm.json, service files, caches,
  bench results. An fsync per watcher run would sit on the edit-to-publish latency.

With ``mode`` (keys: 0600) the temporary file is created 0600, so a secret is never
readable by others while it is written, and gets ``mode`` before the rename. Without it a
replaced file keeps its permissions and a new one gets what ``open`` gives (0666 less
the umask).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename (or a new name) in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(path: Path, private: bool) -> Path:
    """An empty, new file next to ``path``: 0600, or 0666 less the umask (as ``open``)."""
    for _ in range(100):
        # os.urandom, not secrets: the same bytes, without importing random and base64
        # on the guest's boot path (secrets.token_hex is os.urandom(n).hex())
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {path}")


@contextlib.contextmanager
def replacing(path: Path, *, durable: bool = False, mode: int | None = None) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed over ``path`` if the body succeeds.

    For writers that want a file name rather than a file object (an image builder that
    opens, seeks and reopens). On any exception the temporary file is removed and ``path``
    is left as it was. A replaced file keeps its mode unless ``mode`` is given; chmod is
    only called when the mode differs (vfat refuses most mode changes).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o7777
    tmp = _new_temp(path, private=mode is not None)
    try:
        yield tmp
        if mode is not None and tmp.stat().st_mode & 0o7777 != mode:
            os.chmod(tmp, mode)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a write to a descriptor names no file: name the one we make
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """An exclusive flock(2) on ``lock`` for the body: one process at a time, released when
    the body ends or the process dies. ``lock``: a file (created if missing), or a
    directory (flock takes either; a directory lock leaves no file behind)."""
    if lock.is_dir():
        fd = os.open(lock, os.O_RDONLY | os.O_DIRECTORY)
    else:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def creating(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path``, linked in as ``path`` if the body succeeds and
    nothing is there yet: the first writer wins, and a file once there never changes.

    For per-user caches keyed by their inputs whose content is not a function of those
    inputs (an image mkfs stamps with times): two processes filling the same entry at once
    must not swap the file under one that has hashed it and reads it again to upload.
    Afterwards ``path`` holds the winner's bytes, the loser's are removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, private=False)
    try:
        yield tmp
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(
    path: Path, *, durable: bool = False, mode: int | None = None
) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` when the body succeeds."""
    with replacing(path, durable=durable, mode=mode) as tmp, open(tmp, "wb") as out:
        yield out


def write_atomic(
    path: Path, data: bytes, *, durable: bool = False, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` (see the module docstring for ``durable``)."""
    with atomic_file(path, durable=durable, mode=mode) as out:
        out.write(data)
