"""UEFI variables through Linux efivarfs (``/sys/firmware/efi/efivars/<Name>-<guid>``).

Each file holds the 4-byte little-endian attributes followed by the data. A write must be
ONE write(2) of attributes + data (efivarfs turns each write into one SetVariable call),
and the kernel marks most variable files immutable, so ``FS_IMMUTABLE_FL`` is cleared
first. The same class works on a plain directory, which is how the host tests drive it.
It is the guest's ``varstore.VariableStore``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import uuid
from pathlib import Path

from guest.contract.efi.varstore import Variable
from guest.contract.errors import CloudbootError

EFIVARS_DIR = Path("/sys/firmware/efi/efivars")
# _IOR('f', 1, long) / _IOW('f', 2, long) on 64-bit Linux
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
_NO_FLAGS = {errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


class EfiVarError(CloudbootError):
    pass


def _clear_immutable(fd: int) -> None:
    """Drop FS_IMMUTABLE_FL if set; filesystems without flags (tmpfs) are fine as they are."""
    buf = bytearray(struct.pack("@l", 0))
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    except OSError as exc:
        if exc.errno in _NO_FLAGS:
            return
        raise
    (flags,) = struct.unpack("@l", buf)
    if flags & FS_IMMUTABLE_FL:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("@l", flags & ~FS_IMMUTABLE_FL))


class EfiVarStore:
    """Read, write and delete variables in an efivarfs mount (or a directory like one)."""

    def __init__(self, root: Path = EFIVARS_DIR) -> None:
        self.root = root

    def path(self, name: str, guid: uuid.UUID) -> Path:
        return self.root / f"{name}-{guid}"

    def read(self, name: str, guid: uuid.UUID) -> Variable | None:
        path = self.path(name, guid)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EfiVarError(f"cannot read: {exc.strerror}", where=str(path)) from exc
        if len(raw) < 4:
            raise EfiVarError(f"variable file is {len(raw)} bytes, no attributes", where=str(path))
        return Variable(struct.unpack_from("<I", raw)[0], raw[4:])

    def write(self, name: str, guid: uuid.UUID, attributes: int, data: bytes) -> None:
        path = self.path(name, guid)
        payload = struct.pack("<I", attributes) + data
        try:
            if path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    _clear_immutable(fd)
                finally:
                    os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, payload)
                if written != len(payload):
                    raise EfiVarError(
                        f"short write: {written} of {len(payload)} bytes", where=str(path)
                    )
                # efivarfs reports exactly what we wrote; a plain file may keep a longer tail
                if os.fstat(fd).st_size > len(payload):
                    os.ftruncate(fd, len(payload))
            finally:
                os.close(fd)
        except OSError as exc:
            raise EfiVarError(f"cannot write {name}: {exc.strerror}", where=str(path)) from exc

    def delete(self, name: str, guid: uuid.UUID) -> bool:
        """Remove a variable; False when it did not exist."""
        path = self.path(name, guid)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            _clear_immutable(fd)
        finally:
            os.close(fd)
        try:
            path.unlink()
        except OSError as exc:
            raise EfiVarError(f"cannot delete {name}: {exc.strerror}", where=str(path)) from exc
        return True
