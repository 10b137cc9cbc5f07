"""Staging a target on the cache ESP and pointing the firmware at it
(docs/wire-formats.md §5.5-§5.8).

Order matters: the files are written and flushed to the disk BEFORE any NVRAM write, so a
power cut can leave a stale file but never a Boot0001 that points at nothing. Any error
before ``write_boot_entry`` leaves NVRAM exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from guest.agent.blockdev import BlockDevice, read_disk_gpt, scan
from guest.contract import gpt
from guest.contract.efi import CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID, ucs16
from guest.contract.efi.devpath import HardDrive
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import (
    CACHE_MARKER,
    LoadOption,
    cloudboot_entry,
    entry_description,
    safe_name,
    staged_paths,
)
from guest.contract.efi.varstore import VariableStore, stage_boot_entry
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import atomic_file

#: The largest kernel or initrd (each) the guest stages, from a registry or a disk: real
#: ones are tens of MiB; the bound keeps a hostile size from filling memory or the ESP.
MAX_BOOT_FILE = 512 << 20

CACHE_DISK_HINT = (
    "attach the cache disk (make one with `cloudboot cache-disk`): a GPT disk whose ESP "
    f"partition is named {gpt.CACHE_PARTITION_NAME!r}"
)


class StageError(CloudbootError):
    pass


@dataclass(frozen=True)
class CacheEsp:
    """The chosen ESP: its disk, its GPT entry, and the kernel's device for it."""

    disk: BlockDevice
    partition: gpt.Partition
    device: BlockDevice
    named: bool

    @property
    def hard_drive(self) -> HardDrive:
        p = self.partition
        return HardDrive(p.number, p.first_lba, p.size_sectors, p.unique_guid)


#: systemd-stub's record of the partition the UKI was started from (a UCS-2 GUID).
LOADER_GUID = uuid.UUID("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")


def booted_partition(store: EfiVarStore) -> uuid.UUID | None:
    """``LoaderDevicePartUUID``: the partition our UKI came from, when the stub said."""
    var = store.read("LoaderDevicePartUUID", LOADER_GUID)
    if var is None:
        return None
    try:
        return uuid.UUID(var.data.decode("utf-16-le").rstrip("\0"))
    except (UnicodeDecodeError, ValueError):
        return None


def find_cache_esp(
    devices: Sequence[BlockDevice], booted_from: uuid.UUID | None = None
) -> tuple[CacheEsp, list[str]]:
    """Prefer the ESP named cloud-boot-cache, else one unnamed ESP (docs/wire-formats.md §5.5).

    Returns the ESP and any warnings to log. Chosen deliberately, not first-found: the
    disk the UKI was booted from (``booted_from``, its partition GUID) never receives
    kernels; two ESPs named cloud-boot-cache are an error naming both, not a race won by
    the lower device name (a USB stick against the virtio disk); and ``write_files``
    then wants the marker file ``cloudboot cache-disk`` wrote.
    """
    named: list[CacheEsp] = []
    unnamed: list[CacheEsp] = []
    for disk in (d for d in devices if not d.is_partition):
        table = read_disk_gpt(disk.node)
        if table is None:
            continue
        if booted_from is not None and any(p.unique_guid == booted_from for p in table.partitions):
            continue
        for part in table.esps():
            dev = next(
                (d for d in devices if d.disk == disk.name and d.partition == part.number), None
            )
            if dev is None:
                continue
            esp = CacheEsp(disk, part, dev, part.name == gpt.CACHE_PARTITION_NAME)
            (named if esp.named else unnamed).append(esp)
    if len(named) > 1:
        names = " and ".join(e.device.name for e in named)
        raise StageError(
            f"ESPs named {gpt.CACHE_PARTITION_NAME!r} on {names}: refusing to guess which one "
            "receives kernels; detach the one that is not the cache disk",
            where="GPT",
        )
    if named:
        return named[0], []
    if len(unnamed) == 1:
        esp = unnamed[0]
        return esp, [
            f"no ESP named {gpt.CACHE_PARTITION_NAME!r}; using the only ESP "
            f"{esp.device.name} ({esp.partition.name or 'unnamed'})"
        ]
    if not unnamed:
        raise StageError("no cache ESP found", where="GPT")
    names = ", ".join(e.device.name for e in unnamed)
    raise StageError(
        f"several unnamed ESPs ({names}) and none named {gpt.CACHE_PARTITION_NAME!r}", where="GPT"
    )


@dataclass(frozen=True)
class DeviceRuns:
    """A file's bytes where they lie on a block device, without reading them.

    ``runs`` are (device byte offset, length) in file order; an offset of None is a run of
    zeros (a hole, or an extent never written). Staging copies the runs device -> ESP file
    inside the kernel (``sendfile``), so a 15 MB kernel never passes through Python: under
    TCG every copy of it costs ~60 ms, and reading it into memory first made three.
    """

    device: Path
    runs: tuple[tuple[int | None, int], ...]

    @property
    def size(self) -> int:
        return sum(length for _, length in self.runs)

    def read(self) -> bytes:
        """The bytes themselves (for callers that need them, and for tests)."""
        return b"".join(data_chunks(self))


#: What a kernel or initrd is on its way to the ESP: bytes, or runs on a device.
FileData = bytes | DeviceRuns


def data_size(data: FileData) -> int:
    return data.size if isinstance(data, DeviceRuns) else len(data)


def data_chunks(data: FileData) -> Iterator[bytes | memoryview]:
    """``data`` in pieces of at most 1 MiB, device runs read with ``pread``."""
    if not isinstance(data, DeviceRuns):
        view = memoryview(data)
        for start in range(0, len(view), len(_ZEROS)):
            yield view[start : start + len(_ZEROS)]
        return
    with open(data.device, "rb", buffering=0) as src:
        for offset, length in data.runs:
            for start in range(0, length, len(_ZEROS)):
                size = min(len(_ZEROS), length - start)
                if offset is None:
                    yield memoryview(_ZEROS)[:size]
                    continue
                chunk = os.pread(src.fileno(), size, offset + start)
                if len(chunk) != size:
                    raise StageError("short read", where=f"{data.device}@{offset + start}")
                yield chunk


def disk_content(kernel: FileData, initrd: FileData | None) -> str:
    """A disk target's stamp content (docs/wire-formats.md §5.6): SHA-256 over the lines
    ``disk-kernel md5:<hex>`` and ``disk-initrd md5:<hex>`` of the files' own bytes.

    A disk has no digest to trust, and its metadata can stay the same while a file
    changes (a reproducible image keeps inodes, times and extents), so the bytes
    themselves are hashed: one read of each file, whose pages the copy then finds in the
    page cache. MD5, because the stamp only has to notice a change, never to vouch
    for content (whoever can write the disk can write any kernel to it): under TCG it
    hashed a 14 MB kernel in 0.06 s where SHA-256 took 0.27 s, next to a 0.9 s write.
    """
    lines = []
    for role, data in (("disk-kernel", kernel), ("disk-initrd", initrd)):
        if data is not None:
            digest = hashlib.md5(usedforsecurity=False)
            for chunk in data_chunks(data):
                digest.update(chunk)
            lines.append(f"{role} md5:{digest.hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def copy_into(fd: int, data: FileData) -> None:
    """Write ``data`` at ``fd``'s position; device runs go through ``sendfile``."""
    if not isinstance(data, DeviceRuns):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return
    with open(data.device, "rb", buffering=0) as src:
        for start, length in data.runs:
            if start is None:
                _write_zeros(fd, length)
                continue
            offset, left = start, length
            while left:
                sent = os.sendfile(fd, src.fileno(), offset, left)
                if sent == 0:
                    raise StageError("device ended early", where=f"{data.device}@{offset}")
                offset, left = offset + sent, left - sent


def _write_zeros(fd: int, length: int) -> None:
    """A hole, written from one 1 MiB buffer: never ``bytes(length)`` of a hole's size."""
    while length:
        view = memoryview(_ZEROS)[: min(length, len(_ZEROS))]
        while view:
            written = os.write(fd, view)
            view, length = view[written:], length - written


_ZEROS = bytes(1 << 20)


class EspFiles(Protocol):
    """Somewhere to put files on the ESP; ``flush`` returns once they are on the disk."""

    def write(self, path: str, data: FileData) -> None: ...
    def read(self, path: str, limit: int) -> bytes | None: ...
    def flush(self) -> None: ...


class MountedEsp:
    r"""An ESP mounted (vfat) at ``root``: ``\EFI\Linux\x`` becomes ``root/EFI/Linux/x``.

    Each file is written to a temporary name, fsynced, renamed over the old one, and the
    directory fsynced, so a half-written kernel never carries the name Boot0001 uses.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*[p for p in path.split("\\") if p])

    def write(self, path: str, data: FileData) -> None:
        target = self._path(path)
        try:
            with atomic_file(target, durable=True) as out:
                copy_into(out.fileno(), data)
        except OSError as exc:
            raise StageError(f"cannot write {path}: {exc.strerror}", where=str(target)) from exc

    def read(self, path: str, limit: int) -> bytes | None:
        """A small file's bytes (None when absent or larger than ``limit``)."""
        target = self._path(path)
        try:
            with open(target, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return None
        return data if len(data) <= limit else None

    def flush(self) -> None:
        os.sync()


def choose_cache_esp(sys_root: Path, dev_root: Path, efivars: Path) -> tuple[CacheEsp, list[str]]:
    """The cache ESP for this machine: ``find_cache_esp`` over every disk, leaving out
    the one the stub says we booted from. One choice for staging and the floor alike."""
    booted = booted_partition(EfiVarStore(efivars))
    return find_cache_esp(scan(sys_root, dev_root), booted)


def require_marker(esp: EspFiles) -> None:
    """Nothing is read from or written to a cache ESP without the cache-disk marker."""
    if esp.read(CACHE_MARKER, 4096) is None:
        raise StageError(
            f"no {CACHE_MARKER} on it: not a disk made by `cloudboot cache-disk` (one made "
            "before the marker existed: delete it and run `cloudboot cache-disk` again)",
            where="cache ESP",
        )


def stamp_path(target: str) -> str:
    r"""``\EFI\Linux\<safe>.staged``: what the target's staged files were made from."""
    return rf"\EFI\Linux\{safe_name(target)}.staged"


def stamp(content: str, kernel: FileData, initrd: FileData | None) -> bytes:
    """The stamp's text: the content digest and the files' sizes (docs/wire-formats.md §5.6)."""
    initrd_size = "-" if initrd is None else str(data_size(initrd))
    return f"cloudboot staged v1 {content} {data_size(kernel)} {initrd_size}\n".encode()


def write_files(
    esp: EspFiles,
    target: str,
    kernel: FileData,
    initrd: FileData | None,
    content: str | None = None,
) -> bool:
    """Put the target's kernel and initrd on the ESP; False when they are already there.

    ``content`` names what the files are made of (a digest over the OCI layer digests,
    ``guest.agent.pulls.OciBoot.content``, or over a disk target's files,
    :func:`disk_content`), None when the stamp must not be trusted (the firmware came
    back, or the host loop's staging). The stamp that records it is written only
    after the files are on the disk, and emptied before they are rewritten, so a stamp
    never vouches for a half-written file. A plan edit that changes only the command
    line, or flips between targets already staged, then skips the biggest write of the
    pass (about a second under TCG).
    """
    require_marker(esp)
    kernel_path, initrd_path = staged_paths(target)
    stamp_file = stamp_path(target)
    old = esp.read(stamp_file, 4096)
    new = None if content is None else stamp(content, kernel, initrd)
    if new is not None and old == new:
        return False
    if old:
        esp.write(stamp_file, b"")
    esp.write(kernel_path, kernel)
    if initrd is not None:
        esp.write(initrd_path, initrd)
    esp.flush()
    if new is not None:
        esp.write(stamp_file, new)
        esp.flush()
    return True


def came_back(store: VariableStore, target: str) -> bool:
    """Whether our Boot0001 for ``target`` is already set as this pass starts: the
    firmware fell back to the bootstrap (the staged files did not boot), or someone chose
    it. Either way the stamp is not trusted and the files are written again."""
    found = store.read(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID)
    if found is None:
        return False
    try:
        entry = LoadOption.from_bytes(found.data)
    except CloudbootError:
        return True  # unreadable: rewrite, as before stamps
    return entry.description == entry_description(target)


def write_boot_entry(
    store: VariableStore, target: str, esp: CacheEsp, cmdline: str, has_initrd: bool = True
) -> bool:
    """Boot0001 + BootOrder (0001 first). Returns True when BootOrder was rewritten."""
    entry = cloudboot_entry(target, esp.hard_drive, cmdline)
    if not has_initrd:
        entry = replace(entry, optional_data=ucs16.encode(cmdline) if cmdline else b"")
    return stage_boot_entry(store, bytes(entry))
