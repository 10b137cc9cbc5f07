"""Volumes between a disk and its filesystem: the seam the disk source reads through.

``open_device`` gives the filesystem readers a seekable stream: the device itself for a
plain filesystem, or the decrypted data of a LUKS1/LUKS2 volume unlocked in userland
(``luks``): decrypted by the kernel's dm-crypt when the device is a block device and
device-mapper is there (``devmapper.crypt_device``), else in userland (``cryptstream``).
Only the standard library is imported here; the LUKS code (and ``ctypes``
with libcrypto/libargon2) is imported when a LUKS header is seen, so a plain ext4 boot
pays nothing for it. See docs/disks.md for why volumes are opened in userland.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from guest.agent.blockdev import BlockDevice
from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    from guest.agent.disks.bootfiles import BootFiles
    from guest.agent.volumes.assemble import Volume
    from guest.agent.volumes.linear import Piece
    from guest.agent.volumes.luks import Header

_CHUNK = 1 << 20
_DECRYPT_BUFFER = 64 << 10
#: The most a LUKS2 header (both copies of the metadata) may make us read.
_MAX_HEADER = 4 << 20
#: Argon2 may use at most this share of the memory the guest has available.
_ARGON2_SHARE = 0.75


class Log(Protocol):
    def log(self, message: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Opened:
    """What the filesystem reader reads: a stream and the name its errors carry; for a
    volume of device pieces (md, LVM), where its bytes lie."""

    stream: BinaryIO
    where: str
    decrypted: bool
    pieces: tuple[Piece, ...] | None = None


@contextlib.contextmanager
def open_spec(
    spec: str, devices: list[BlockDevice], passphrase: str | None, console: Log,
    meminfo: Path = Path("/proc/meminfo"),
) -> Iterator[Opened]:  # fmt: skip
    """What a plan's ``device`` names, opened: an md RAID1 array (``/dev/md/NAME``), an
    LVM logical volume (``/dev/VG/LV``, ``/dev/mapper/VG-LV``), or a block device (a LUKS
    volume unlocked), or, for ``LABEL=``/``UUID=`` that no block device carries, the
    volume whose filesystem does."""
    found = locate(spec, devices, console)
    if not isinstance(found, BlockDevice):
        yield _linear(spec, found, console)
        return
    console.log(f"reading {spec} ({found.name})")
    with open_device(found.node, passphrase, console, meminfo) as opened:
        yield opened


def locate(spec: str, devices: list[BlockDevice], console: Log) -> BlockDevice | Volume:
    """What a plan's ``device`` names: an md RAID1 array (``/dev/md/NAME``) or an LVM
    logical volume (``/dev/VG/LV``, ``/dev/mapper/VG-LV``) found on the devices, a block
    device, or, for ``LABEL=``/``UUID=`` that no block device carries, the volume whose
    filesystem does."""
    from guest.agent import blockdev

    if spec.startswith("/dev/") and not any(spec == f"/dev/{d.name}" for d in devices):
        from guest.agent.volumes import assemble

        if assemble.names_a_volume(spec):
            return assemble.named(spec, devices, console)
    try:
        return blockdev.resolve(spec, devices)
    except blockdev.DeviceNotFoundError:
        if "=" not in spec:
            raise
        from guest.agent.volumes import assemble

        return assemble.by_identity(spec, devices, console)


def _linear(spec: str, volume: Volume, console: Log) -> Opened:
    from guest.agent.volumes.linear import LinearStream

    console.log(f"reading {spec} ({volume.what})")
    stream = io.BufferedReader(LinearStream(volume.pieces, spec), _DECRYPT_BUFFER)
    return Opened(stream, spec, decrypted=False, pieces=volume.pieces)  # type: ignore[arg-type]


@contextlib.contextmanager
def open_device(
    node: Path, passphrase: str | None, console: Log, meminfo: Path = Path("/proc/meminfo")
) -> Iterator[Opened]:
    """The device as a stream; a LUKS volume unlocked with ``passphrase`` first."""
    try:
        raw = open(node, "rb", buffering=_CHUNK)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CloudbootError(f"cannot open: {exc.strerror}", where=str(node)) from exc
    with raw:
        head = raw.read(4096)
        raw.seek(0)
        if head[:6] != b"LUKS\xba\xbe":
            yield Opened(raw, str(node), decrypted=False)
            return
        secret = require_passphrase(passphrase, str(node))
        header, key, size = unlock_key(raw, str(node), secret, available_memory(meminfo), console)
        from guest.agent.volumes import devmapper

        with devmapper.crypt_device(node, header, key, size, console) as plain:
            if plain is not None:
                yield Opened(plain, f"{node}:luks", decrypted=True)
                return
        stream = _stream(raw, str(node), header, key, size)
        yield Opened(stream, f"{node}:luks", decrypted=True)  # type: ignore[arg-type]


def require_passphrase(passphrase: str | None, where: str) -> bytes:
    if not passphrase:
        raise CloudbootError(
            "is a LUKS volume and no passphrase was given (the plan's luks-passphrase "
            "or cloudboot.disk.luks-passphrase)",
            where=where,
        )
    return passphrase.encode()


def resolved(files: BootFiles, opened: Opened) -> BootFiles:
    """Boot files whose runs point at a real device, or their bytes.

    The reader answers "where the file lies" in the stream's coordinates. For a plain
    device those are the device's; for md/LVM pieces they are mapped onto the device
    (so staging still copies device -> ESP); for a decrypted volume, or a file spread
    over several devices, the bytes are read through the stream here.
    """
    if not opened.decrypted and opened.pieces is None:
        return files
    from guest.agent.stage import DeviceRuns

    def plain(data: object) -> object:
        if not isinstance(data, DeviceRuns):
            return data
        if opened.pieces is not None:
            from guest.agent.volumes.linear import to_device

            mapped = to_device(data.runs, opened.pieces)
            if mapped is not None:
                return DeviceRuns(*mapped)
        out = bytearray()
        for offset, length in data.runs:
            if offset is None:
                out += bytes(length)
                continue
            opened.stream.seek(offset)
            chunk = opened.stream.read(length)
            if len(chunk) != length:
                raise CloudbootError("short read from the volume", where=opened.where)
            out += chunk
        return bytes(out)

    return dataclasses.replace(files, kernel=plain(files.kernel), initrd=plain(files.initrd))  # type: ignore[arg-type]


def available_memory(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _stream(raw: BinaryIO, where: str, header: Header, key: bytes, size: int) -> object:
    """The data segment decrypted in userland (no block device, or no device-mapper)."""
    from guest.agent.volumes.cryptstream import DecryptedStream, SectorCipher

    iv_step = header.sector_size // 512
    cipher = SectorCipher.make(
        header.cipher, key, header.sector_size, where, iv_step, header.iv_offset
    )
    # the ext4 package wants peek(): buffered, in reads of a few filesystem blocks
    return io.BufferedReader(
        DecryptedStream(raw, header.data_offset, size, cipher), _DECRYPT_BUFFER
    )


def unlock_key(
    raw: BinaryIO, where: str, passphrase: bytes, available: int | None, console: Log
) -> tuple[Header, bytes, int]:
    """The LUKS header, the volume key ``passphrase`` opens, and the data segment's size
    (checked against the device); errors name ``where`` and never carry a secret."""
    from guest.agent.volumes import luks

    device_size = raw.seek(0, 2)
    raw.seek(0)
    head = raw.read(4096)
    version = int.from_bytes(head[6:8], "big")
    if version == 1:
        header = luks.parse_luks1(head, where)
    elif version == 2:
        hdr_size = int.from_bytes(head[8:16], "big")
        raw.seek(0)
        _size, text = luks.luks2_json_area(raw.read(min(hdr_size, _MAX_HEADER)), where)
        header = luks.parse_luks2(text, where)
    else:
        raise luks.LuksError(f"LUKS version {version} is not supported", where=where)
    if not header.keyslots:
        raise luks.LuksError("no usable key slot", where=where)
    console.log(f"LUKS{version} volume: {len(header.keyslots)} key slot(s), {header.cipher}")
    key = None
    for slot in header.keyslots:
        need = slot.kdf.memory_kib * 1024
        if available is not None and need > available * _ARGON2_SHARE:
            console.log(f"LUKS key slot {slot.name}: Argon2 wants {need >> 20} MiB, skipped")
            continue
        size = luks.material_size(slot)
        if slot.area_offset + size > device_size:
            raise luks.LuksError(
                f"key slot {slot.name} lies past the end of the device", where=where
            )
        raw.seek(slot.area_offset)
        key = luks.try_keyslot(header, slot, passphrase, raw.read(size), where)
        if key is not None:
            console.log(f"LUKS key slot {slot.name} opened")
            break
    if key is None:
        raise luks.WrongPassphraseError(
            f"no LUKS key slot opens with the passphrase given ({len(header.keyslots)} tried)",
            where=where,
        )
    size = device_size - header.data_offset if header.data_size is None else header.data_size
    if header.data_offset <= 0 or header.data_offset + size > device_size or size <= 0:
        raise luks.LuksError(
            f"data segment at {header.data_offset}+{size} is outside the device", where=where
        )
    return header, key, size
