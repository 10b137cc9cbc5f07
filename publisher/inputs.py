"""Bounded reads of the small files a user names: plans, keys, signatures, metadata.

A path on the command line can be anything: a FIFO that never ends, ``/dev/zero``, a
directory, a dangling symlink, a 10 GB file named by mistake. Each of those gets its own
clear error here instead of a hang, a memory blow-up or "no such file or directory";
``-`` reads standard input, with the same size cap.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from guest.contract.errors import CloudbootError

#: A plan is a page of HCL; a megabyte is far beyond any real one.
MAX_PLAN_BYTES = 1 << 20
#: PEM keys and base64 signatures are a few hundred bytes.
MAX_KEY_BYTES = 64 << 10

STDIN = "-"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputError(CloudbootError):
    """A named input that cannot be read as a small regular file."""


def file_kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: Path, what: str) -> None:
    """Raise ``InputError`` unless ``path`` is (a symlink to) an existing regular file."""
    if str(path) == "":
        raise InputError(f"empty path given for the {what}: name a file")
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise InputError(
                f"broken symlink to {target}: fix or remove it", where=str(path)
            ) from None
        raise InputError("no such file or directory: check the path", where=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", where=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"{file_kind(st.st_mode)}, not a {what} file: name a regular file", where=str(path)
        )


def check_small_file(path: Path, limit: int, what: str) -> None:
    """``check_regular`` plus the size cap, for files a library reads itself."""
    check_regular(path, what)
    if path.stat().st_size > limit:
        raise InputError(
            f"{what} larger than {limit} bytes: is this the right file?", where=str(path)
        )


#: What a read of stdin asks for first (a pipe's size is not known up front).
_FIRST_READ = 64 << 10


def _read_capped(
    stream: BinaryIO, limit: int, what: str, where: str, expected: int = _FIRST_READ
) -> bytes:
    """At most ``limit`` bytes, or an error. The first read asks for ``expected`` + 1
    bytes (a regular file's size), not ``limit`` + 1: a read of a megabyte allocates that
    megabyte, which was half the cost of reading a plan (bench/plan_parse.py)."""
    data = stream.read(min(expected, limit) + 1)
    if len(data) > expected:  # more than expected (stdin, or a file that grew): the rest
        data += stream.read(limit + 1 - len(data))
    if len(data) > limit:
        raise InputError(f"{what} larger than {limit} bytes: is this the right file?", where=where)
    return data


def read_input(path: Path | str, *, limit: int, what: str) -> bytes:
    """The bytes of a small regular file (or of stdin for ``-``), at most ``limit``."""
    if str(path) == STDIN:
        return _read_capped(sys.stdin.buffer, limit, what, "<stdin>")
    path = Path(path)
    check_regular(path, what)
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the check, open does not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", where=str(path)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{file_kind(st.st_mode)}, not a {what} file", where=str(path))
        os.set_blocking(fd, True)
        try:
            return _read_capped(f, limit, what, str(path), st.st_size)
        except OSError as exc:
            raise InputError(f"cannot read {what}: {exc.strerror}", where=str(path)) from None


def check_output(path: Path, what: str) -> None:
    """Refuse to replace something that is not a regular file (``/dev/null``, a FIFO, a
    directory): an atomic rename over it would swap a device node for our file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot use as {what}: {exc.strerror}", where=str(path)) from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"is a symlink: name the {what} file itself", where=str(path))
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"{file_kind(st.st_mode)}, not a file to write the {what} to: choose another path",
            where=str(path),
        )
