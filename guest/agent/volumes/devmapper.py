"""Kernel block devices for volumes the userland layer opened: device-mapper tables set up
through the DM ioctls on ``/dev/mapper/control`` (docs/disks.md, "Volumes under xfs and
btrfs").

Why: the kernel's xfs and btrfs drivers need a block device, and LVM, md and LUKS are
opened in userland (streams). What userland found is handed to the kernel as one
device-mapper table, read-only:

- ``linear`` for LVM logical volumes (one target per segment: one or many) and md RAID1
  (one target: the in-sync member from its data offset);
- ``crypt`` (``aes-xts-plain64``) for a LUKS volume whose key userland already derived.

One mechanism for all three (a loop device with an offset covers only the one-piece
cases and cannot decrypt). No libdevmapper, no dmsetup: the ioctl structures are packed
here (pure functions, tested on the host); only ``DeviceMapper`` touches the machine.

The crypt key goes into a ``bytearray`` as hex, is handed to the kernel with
``DM_SECURE_DATA_FLAG`` (the kernel wipes its copy of the ioctl buffer) and the buffer is
zeroed right after the ioctl; no error message carries a table.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    from guest.agent.volumes.luks import Header

DM_VERSION = (4, 0, 0)
DM_NAME_LEN = 128
DM_UUID_LEN = 129
#: struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
#: event_nr, padding, dev, name, uuid, data[7].
_HEADER = struct.Struct(f"=3IIIIiIIIQ{DM_NAME_LEN}s{DM_UUID_LEN}s7s")
#: struct dm_target_spec: sector_start, length, status, next, target_type[16].
_SPEC = struct.Struct("=QQiI16s")
DM_READONLY_FLAG = 1 << 0
DM_SECURE_DATA_FLAG = 1 << 15
_DM_IOCTL = 0xFD
DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD = 3, 4, 6, 9
_STEP = {DM_DEV_CREATE: "create", DM_DEV_REMOVE: "remove", DM_DEV_SUSPEND: "resume",
         DM_TABLE_LOAD: "table load"}  # fmt: skip
SECTOR = 512
_HEX = b"0123456789abcdef"
MAX_TARGETS = 1024
#: dm-crypt, and the XTS and ECB templates its ``aes-xts-plain64`` needs (``xts(aes)``
#: is built over ``ecb(aes)``); no module autoloading in our initramfs (no modules.alias).
CRYPT_MODULES = ("dm_mod", "ecb", "xts", "dm_crypt")
#: The crypt device an ext4-in-LUKS read goes through (xfs/btrfs use their own name).
EXT4_CRYPT_NAME = "cloudboot-luks"


class DeviceMapperError(CloudbootError):
    pass


def ioctl_number(command: int) -> int:
    """``_IOWR(DM_IOCTL, command, struct dm_ioctl)``."""
    return (3 << 30) | (_HEADER.size << 16) | (_DM_IOCTL << 8) | command


@dataclass(frozen=True)
class Target:
    """One line of a table: ``length`` sectors from ``start`` mapped by ``kind`` with
    ``params`` (a crypt target's params hold the key: a wiped ``bytearray``)."""

    start: int
    length: int
    kind: str
    params: bytes | bytearray


def header(name: str, flags: int = 0, data_size: int = 0, target_count: int = 0) -> bytes:
    raw_name = name.encode()
    if not raw_name or len(raw_name) >= DM_NAME_LEN or "/" in name:
        raise DeviceMapperError(f"device-mapper name {name!r}")
    size = max(data_size, _HEADER.size)
    return _HEADER.pack(*DM_VERSION, size, _HEADER.size, target_count, 0, flags, 0, 0, 0,
                        raw_name, b"", b"")  # fmt: skip


def table_buffer(name: str, targets: Sequence[Target], flags: int) -> bytearray:
    """The DM_TABLE_LOAD buffer: the header, then each target spec and its params
    (NUL-terminated, padded to 8 bytes; ``next`` is the distance to the next spec)."""
    if not 1 <= len(targets) <= MAX_TARGETS:
        raise DeviceMapperError(f"a table of {len(targets)} targets")
    body = bytearray()
    for target in targets:
        kind = target.kind.encode()
        if len(kind) >= 16:
            raise DeviceMapperError(f"target type {target.kind!r}")
        size = _SPEC.size + len(target.params) + 1
        size += -size % 8
        body += _SPEC.pack(target.start, target.length, 0, size, kind)
        body += target.params
        body += bytes(size - _SPEC.size - len(target.params))
    out = bytearray(header(name, flags, _HEADER.size + len(body), len(targets)))
    out += body
    body[:] = bytes(len(body))
    return out


def device_number(buffer: bytes | bytearray) -> tuple[int, int]:
    """(major, minor) from a reply's ``dev`` (the kernel's ``huge_encode_dev``)."""
    dev = _HEADER.unpack_from(buffer)[10]
    return (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def linear_targets(pieces: Sequence[tuple[int, int, int, int]]) -> list[Target]:
    """``(start, length, major:minor as (major << 20 | minor), offset)`` in bytes, each a
    ``linear`` target; every number must be whole sectors."""
    out = []
    for start, length, devno, offset in pieces:
        if (start | length | offset) % SECTOR or length <= 0:
            raise DeviceMapperError(f"piece {start}+{length}@{offset} is not whole sectors")
        params = f"{devno >> 20}:{devno & 0xFFFFF} {offset // SECTOR}".encode()
        out.append(Target(start // SECTOR, length // SECTOR, "linear", params))
    return out


def crypt_target(
    key: bytes | bytearray, length: int, devno: int, offset: int, iv_offset: int,
    sector_size: int, cipher: str = "aes-xts-plain64",
) -> Target:  # fmt: skip
    """A read-only ``crypt`` target; ``iv_offset`` and the IV count 512-byte sectors
    (cryptsetup does not set ``iv_large_sectors``: docs/disks.md)."""
    if (length | offset) % sector_size or length <= 0:
        raise DeviceMapperError(f"crypt segment {offset}+{length} is not whole sectors")
    params = bytearray(f"{cipher} ".encode())
    for byte in key:
        params.append(_HEX[byte >> 4])
        params.append(_HEX[byte & 15])
    options = "" if sector_size == SECTOR else f" 1 sector_size:{sector_size}"
    params += f" {iv_offset} {devno >> 20}:{devno & 0xFFFFF} {offset // SECTOR}{options}".encode()
    return Target(0, length // SECTOR, "crypt", params)


def devno(node: Path) -> int:
    """A block device's number as ``major << 20 | minor``."""
    try:
        st = os.stat(node)
    except OSError as exc:
        raise DeviceMapperError(f"cannot stat: {exc.strerror}", where=str(node)) from exc
    return os.major(st.st_rdev) << 20 | os.minor(st.st_rdev)


class DeviceMapper:
    """The machine edge: create, load (read-only), resume and remove a mapped device."""

    def __init__(self, control: Path = Path("/dev/mapper/control")) -> None:
        self.control = control

    def _call(self, command: int, buffer: bytearray, where: str) -> bytearray:
        import fcntl

        try:
            fd = os.open(self.control, os.O_RDWR)
        except OSError as exc:
            raise DeviceMapperError(
                f"cannot open {self.control}: {exc.strerror} (is dm_mod in the recipe's"
                " initramfs.on_demand_modules?)",
                where=where,
            ) from exc
        try:
            fcntl.ioctl(fd, ioctl_number(command), buffer, True)
        except OSError as exc:
            hint = (
                " (a target's module missing? see the kernel log)"
                if command == DM_TABLE_LOAD
                else ""
            )
            raise DeviceMapperError(
                f"device-mapper {_STEP[command]} failed: {exc.strerror}{hint}", where=where
            ) from exc
        finally:
            os.close(fd)
        return buffer

    def create(self, name: str, targets: Sequence[Target], secret: bool) -> tuple[int, int]:
        """``name`` mapped read-only by ``targets``; its (major, minor). The table buffer
        is zeroed after the load (it may hold a key)."""
        where = f"/dev/mapper/{name}"
        reply = self._call(DM_DEV_CREATE, bytearray(header(name)), where)
        number = device_number(reply)
        flags = DM_READONLY_FLAG | (DM_SECURE_DATA_FLAG if secret else 0)
        table = table_buffer(name, targets, flags)
        try:
            self._call(DM_TABLE_LOAD, table, where)
            self._call(DM_DEV_SUSPEND, bytearray(header(name)), where)  # resume: live
        except DeviceMapperError:
            self.remove(name)
            raise
        finally:
            table[:] = bytes(len(table))
        return number

    def remove(self, name: str) -> None:
        self._call(DM_DEV_REMOVE, bytearray(header(name)), f"/dev/mapper/{name}")


def load_modules(modules: Sequence[str]) -> None:
    """modprobe each (packed on demand); a module missing or built in shows later, as the
    control node or the table load failing."""
    import subprocess

    from guest.agent import sysguest

    for module in modules:
        with contextlib.suppress(OSError):
            subprocess.run(
                [sysguest.BUSYBOX, "modprobe", "-q", module],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


class Log(Protocol):
    def log(self, message: str) -> None: ...


@contextlib.contextmanager
def crypt_device(
    node: Path, header: Header, key: bytes, size: int, console: Log, dev: Path = Path("/dev")
) -> Iterator[BinaryIO | None]:
    """The LUKS data segment on block device ``node`` decrypted by the kernel's dm-crypt,
    opened for reading; None (logged) when device-mapper is not there or refuses, and the
    caller decrypts in userland instead. The kernel decrypts many times faster than one
    OpenSSL call per sector from Python (docs/disks.md)."""
    try:
        is_block = stat.S_ISBLK(os.stat(node).st_mode)
    except OSError:
        is_block = False
    if not is_block or header.cipher != "aes-xts-plain64":
        yield None
        return
    target = crypt_target(key, size, devno(node), header.data_offset, header.iv_offset,
                          header.sector_size, header.cipher)  # fmt: skip
    mapper = DeviceMapper(dev / "mapper/control")
    try:
        load_modules(CRYPT_MODULES)
        _major, minor = mapper.create(EXT4_CRYPT_NAME, [target], secret=True)
    except DeviceMapperError as exc:
        console.log(f"dm-crypt not used ({exc.message}): decrypting in userland")
        yield None
        return
    finally:
        if isinstance(target.params, bytearray):
            target.params[:] = bytes(len(target.params))
    try:
        with open(dev / f"dm-{minor}", "rb") as f:
            console.log(f"LUKS data decrypted by dm-crypt (/dev/dm-{minor})")
            yield f
    finally:
        mapper.remove(EXT4_CRYPT_NAME)
