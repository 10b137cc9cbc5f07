"""Staging a target on the cache ESP and pointing the firmware at it (spec 5.5 - 5.8).

Order matters: the files are written and flushed to the disk BEFORE any NVRAM write, so a
power cut can leave a stale file but never a Boot0001 that points at nothing. Any error
before ``write_boot_entry`` leaves NVRAM exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from guest.agent.blockdev import BlockDevice, read_disk_gpt
from guest.contract import gpt
from guest.contract.efi import BOOT_VARIABLE_ATTRIBUTES, GLOBAL_VARIABLE_GUID, bootorder, ucs16
from guest.contract.efi.devpath import HardDrive
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import cloudboot_entry, staged_paths
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import atomic_file

BOOT_ENTRY = 0x0001
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


def find_cache_esp(devices: Sequence[BlockDevice]) -> tuple[CacheEsp, list[str]]:
    """Spec 5.5: prefer the ESP named cloud-boot-cache; one unnamed ESP with a warning.

    Returns the ESP and any warnings to log. ESPs on disks we booted from (an ISO's
    appended partition is named too, but not with our name) are never "unnamed" picks
    unless they are the only one.
    """
    named: list[CacheEsp] = []
    unnamed: list[CacheEsp] = []
    for disk in (d for d in devices if not d.is_partition):
        table = read_disk_gpt(disk.node)
        if table is None:
            continue
        for part in table.esps():
            dev = next(
                (d for d in devices if d.disk == disk.name and d.partition == part.number), None
            )
            if dev is None:
                continue
            esp = CacheEsp(disk, part, dev, part.name == gpt.CACHE_PARTITION_NAME)
            (named if esp.named else unnamed).append(esp)
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
        out = bytearray()
        with open(self.device, "rb", buffering=0) as src:
            for offset, length in self.runs:
                chunk = bytes(length) if offset is None else os.pread(src.fileno(), length, offset)
                if len(chunk) != length:
                    raise StageError("short read", where=f"{self.device}@{offset}")
                out += chunk
        return bytes(out)


#: What a kernel or initrd is on its way to the ESP: bytes, or runs on a device.
FileData = bytes | DeviceRuns


def data_size(data: FileData) -> int:
    return data.size if isinstance(data, DeviceRuns) else len(data)


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
                copy_into(fd, bytes(length))
                continue
            offset, left = start, length
            while left:
                sent = os.sendfile(fd, src.fileno(), offset, left)
                if sent == 0:
                    raise StageError("device ended early", where=f"{data.device}@{offset}")
                offset, left = offset + sent, left - sent


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

    def write(self, path: str, data: FileData) -> None:
        target = self.root.joinpath(*[p for p in path.split("\\") if p])
        try:
            with atomic_file(target, durable=True) as out:
                copy_into(out.fileno(), data)
        except OSError as exc:
            raise StageError(f"cannot write {path}: {exc.strerror}", where=str(target)) from exc

    def read(self, path: str, limit: int) -> bytes | None:
        """A small file's bytes (None when absent or larger than ``limit``)."""
        target = self.root.joinpath(*[p for p in path.split("\\") if p])
        try:
            with open(target, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return None
        return data if len(data) <= limit else None

    def flush(self) -> None:
        os.sync()


def write_files(esp: EspFiles, target: str, kernel: FileData, initrd: FileData | None) -> None:
    kernel_path, initrd_path = staged_paths(target)
    esp.write(kernel_path, kernel)
    if initrd is not None:
        esp.write(initrd_path, initrd)
    esp.flush()


def write_boot_entry(
    store: EfiVarStore, target: str, esp: CacheEsp, cmdline: str, has_initrd: bool = True
) -> bool:
    """Boot0001 + BootOrder (0001 first). Returns True when BootOrder was rewritten."""
    entry = cloudboot_entry(target, esp.hard_drive, cmdline)
    if not has_initrd:
        entry = replace(entry, optional_data=ucs16.encode(cmdline) if cmdline else b"")
    store.write("Boot0001", GLOBAL_VARIABLE_GUID, BOOT_VARIABLE_ATTRIBUTES, bytes(entry))
    current = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    order = bootorder.put_first(bootorder.parse(current.data) if current else [], BOOT_ENTRY)
    if order is None:
        return False
    store.write(
        "BootOrder", GLOBAL_VARIABLE_GUID, BOOT_VARIABLE_ATTRIBUTES, bootorder.serialise(order)
    )
    return True
