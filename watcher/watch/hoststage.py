"""The host loop (``[watch] loop = "host"``, QEMU): the host stages the target itself.

While the VM is stopped, the host does what the guest agent's pass would: evaluate the
workspace's default plan for the VM's arch, read the default target's kernel and initrd
from its disk image, write them onto the cache disk's ESP and Boot0001/BootOrder into the
VM's vars file. The VM then boots straight into the target: one firmware pass, no agent.

It runs the guest's own code on images instead of devices: ``guest.contract.plan`` to
choose, ``guest.agent.blockdev``/``diskread`` to find and read the disk,
``guest.agent.stage`` to write the ESP files and the boot entry (through
``guest.contract.efi.edk2vars.VarsFile``, the store the host already edits for
`vm reset-nvram --menu`). What only a guest knows (its DHCP lease, its metadata, a menu
choice, an OCI target fetched through its network) is out of scope: such a plan is
refused with a hint to use the ``guest`` loop. A Linux/QEMU development convenience; the
plan's signature is the host's own (it just signed it), so the guest's verification has
nothing to add here.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from guest.agent import blockdev, stage, template
from guest.agent.diskread import Ext4Reader
from guest.agent.disks.bootfiles import read_boot_files
from guest.agent.stage import CacheEsp, FileData
from guest.contract import gpt, plan
from guest.contract.arch import Arch
from guest.contract.efi.edk2vars import VarsFile
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from publisher.run import require_tool, run

HINT = 'use [watch] loop = "guest" for it'


@dataclass(frozen=True)
class HostStaged:
    target: str
    cmdline: str


class ImageEsp:
    """The cache disk image's ESP through mtools (``image@@offset``): what the guest does
    through a vfat mount, done on the stopped VM's image."""

    def __init__(self, image: Path, partition: gpt.Partition) -> None:
        self.target = f"{image}@@{partition.first_lba * gpt.SECTOR}"
        self.mcopy = require_tool("mcopy", "mtools")
        self.mmd = require_tool("mmd", "mtools")
        self.work = image.parent

    @staticmethod
    def _dos(path: str) -> str:
        return "::/" + "/".join(p for p in path.split("\\") if p)

    def write(self, path: str, data: FileData) -> None:
        parts = [p for p in path.split("\\") if p]
        for i in range(1, len(parts)):
            run([self.mmd, "-D", "s", "-i", self.target, "::/" + "/".join(parts[:i])],
                check=False)  # fmt: skip
        src = self.work / ".host-stage.tmp"
        try:
            with src.open("wb") as out:
                stage.copy_into(out.fileno(), data)
            run([self.mcopy, "-o", "-i", self.target, src, self._dos(path)])
        finally:
            src.unlink(missing_ok=True)

    def read(self, path: str, limit: int) -> bytes | None:
        proc = subprocess.run([self.mcopy, "-i", self.target, self._dos(path), "-"],
                              capture_output=True, check=False)  # fmt: skip
        return proc.stdout[:limit] if proc.returncode == 0 else None

    def flush(self) -> None:
        """mtools wrote through; nothing is cached."""


def choose(plan_file: Path, arch: Arch) -> plan.Target:
    """The default target of the workspace's default plan, as the agent would choose it
    without a menu, metadata or subplans."""
    parsed = plan.parse_plan(plan.read_plan_text(plan_file), str(plan_file))
    evaluated = plan.evaluate(parsed, arch.oci)
    target = plan.select_target(evaluated, None)
    if not isinstance(target.source, plan.DiskSource) or target.source.fs != "ext4":
        raise CloudbootError(f"the host loop stages ext4 disk targets only; {HINT}",
                             where=str(target.where))  # fmt: skip
    if template.has_template(target.cmdline or ""):
        raise CloudbootError(f"the target's cmdline needs the guest's lease; {HINT}",
                             where=str(target.where))  # fmt: skip
    return target


def cache_esp(image: Path) -> CacheEsp:
    table = blockdev.read_disk_gpt(image)
    parts = [p for p in (table.partitions if table else ()) if p.name == gpt.CACHE_PARTITION_NAME]
    if len(parts) != 1:
        raise CloudbootError(f"no single ESP named {gpt.CACHE_PARTITION_NAME!r}", where=str(image))
    disk = blockdev.BlockDevice("cache", image, "cache")
    part = blockdev.BlockDevice("cache1", image, "cache", parts[0].number)
    return CacheEsp(disk, parts[0], part, True)


@contextlib.contextmanager
def _reading(disks: Sequence[Path], device: str) -> Iterator[Ext4Reader]:
    devices = [blockdev.BlockDevice(f"disk{i}", d, f"disk{i}") for i, d in enumerate(disks)]
    found = blockdev.resolve(device, devices)
    if found.is_partition:
        raise CloudbootError(f"{device} is a partition: the host loop reads whole-disk "
                             f"file systems only; {HINT}")  # fmt: skip
    with Ext4Reader.open(found.node) as fs:
        yield fs


def stage_on_host(
    plan_file: Path, arch: Arch, disks: Sequence[Path], cache_disk: Path, vars_file: Path
) -> HostStaged:
    """Stage the default target into the stopped VM's cache disk and vars file."""
    target = choose(plan_file, arch)
    source = target.source
    assert isinstance(source, plan.DiskSource)  # choose() made sure
    with _reading(disks, source.device) as fs:
        files = read_boot_files(fs, source.kernel or "", source.initrd or "")
        esp = cache_esp(cache_disk)
        image = ImageEsp(cache_disk, esp.partition)
        stage.write_files(image, target.name, files.kernel, files.initrd)
    store = VarsFile.from_bytes(vars_file.read_bytes())
    cmdline = target.cmdline or ""
    stage.write_boot_entry(store, target.name, esp, cmdline, has_initrd=files.initrd is not None)
    write_atomic(vars_file, bytes(store), durable=True)
    return HostStaged(target.name, cmdline)
