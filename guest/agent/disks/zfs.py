"""A ZFS dataset (Proxmox's ``rpool/ROOT/pve-1``) read through the zfs kernel modules, the
pool imported read-only, the dataset mounted read-only, under one deadline (docs/disks.md
"ZFS").

There is no userland ZFS reader to be had (the on-disk format is a copy-on-write object
store with its own checksums, compression and RAID-Z), so the guest runs OpenZFS itself:
modules built for the guest's kernel and ``zpool`` with its libraries, both packed only
into images whose recipe asks for them (``python -m publisher.media.zfsbuild``). They
live apart from the rest of the guest: the modules under ``/lib/cloudboot/zfs`` (loaded in
file-name order, dependencies first), ``zpool`` under ``/opt/zfs`` with its own ``ld.so``
and libraries, so the guest runtime's libraries are never replaced.

The plan's disk names the dataset as upstream writes it: ``device = "rpool/ROOT/pve-1"``
with ``fs = "zfs"``, or ``dataset = ...`` (upstream's disk mode: ``cloudboot.disk.device``)
next to a ``/dev/...`` device, which then is the only place the pool is looked for
(otherwise every device under ``/dev``), or next to the pool's name. The pool is the
dataset's first component.

Nothing is written to the disk: ``zpool import -o readonly=on -N`` (no dataset mounted by
the import, no log replayed, no label updated; ``cachefile=none``: no zpool.cache
either), forced (``-f``) because a Proxmox disk is never exported at shutdown and was
last used by another host id; a read-only import cannot harm it. The dataset is mounted
with ``MS_RDONLY`` and walked like an xfs mount (``guest.agent.disks.mounted``: confined
paths, caps). The pool is exported again after.

The modules are not signed with the kernel's key: a guest booted with Secure Boot (the
Debian kernel then locks down) refuses to load them, and says so as a located error.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from guest.agent.disks.bootfiles import BootFiles, DiskReadError, read_boot_files
from guest.agent.disks.discover import DiskContext
from guest.agent.disks.mounted import MOUNT_SECONDS, Progress, mounted, under_deadline
from guest.contract.plan.model import DEVICE_PREFIXES

MODULES_DIR = "lib/cloudboot/zfs"
PREFIX = "opt/zfs"
#: OpenZFS's own name rules (zfs_namecheck.c): letters, digits and ``_-.:``, ``/`` between
#: components; a pool name starts with a letter. Checked before any of it reaches argv.
_DATASET = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:-]+)*")
MAX_DATASET = 255
#: Modules + import + mount + reads. Twice an xfs mount's: the first ZFS read also loads
#: ~9 modules (zfs.ko alone is megabytes to relocate, slow under TCG) and scans the devices.
ZFS_SECONDS = 2 * MOUNT_SECONDS
#: One ``zpool`` or ``insmod`` run inside it.
ZPOOL_SECONDS = MOUNT_SECONDS


@dataclass(frozen=True)
class ZfsTarget:
    """Which dataset, its pool, and where the pool's devices are searched."""

    dataset: str
    pool: str
    search: str


def target_of(device: str, dataset: str | None) -> ZfsTarget:
    """The plan's ``device``/``dataset`` as upstream writes them (see the module doc)."""
    name = dataset or device
    if dataset and device and not device.startswith("/dev/") and device != name.split("/")[0]:
        raise DiskReadError(
            f"next to dataset {dataset!r} the device is the pool's /dev/... or its name",
            where=device,
        )
    if name.startswith(DEVICE_PREFIXES):
        raise DiskReadError(
            'fs = "zfs" needs the dataset (e.g. device = "rpool/ROOT/pve-1"), not a device',
            where=name,
        )
    if len(name) > MAX_DATASET or not _DATASET.fullmatch(name):
        raise DiskReadError(
            "not a ZFS dataset name (pool/dataset/..., letters, digits and _-.:)", where=name
        )
    search = device if dataset and device.startswith("/dev/") else "/dev"
    return ZfsTarget(name, name.split("/", 1)[0], search)


class ZfsTools:
    """The guest's OpenZFS: modules and ``zpool`` under ``root`` (``/`` in the guest)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = root / PREFIX

    def present(self) -> bool:
        return (self.prefix / "bin/zpool").is_file() and (self.root / MODULES_DIR).is_dir()

    def load_modules(self, where: str) -> None:
        from guest.agent import sysguest

        loaded = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
        if any(line.startswith("zfs ") for line in loaded.splitlines()):
            return
        for ko in sorted((self.root / MODULES_DIR).iterdir()):
            done = subprocess.run([sysguest.BUSYBOX, "insmod", str(ko)], capture_output=True,
                                  check=False, timeout=ZPOOL_SECONDS)  # fmt: skip
            if done.returncode != 0 and b"File exists" not in done.stderr:
                message = done.stderr.decode(errors="replace").strip()[-300:]
                raise DiskReadError(f"cannot load {ko.name}: {message}", where=where)

    def zpool(self, *args: str, where: str) -> None:
        lib = self.prefix / "lib"
        argv = [str(lib / "ld-linux-x86-64.so.2"), "--library-path", str(lib),
                str(self.prefix / "bin/zpool"), *args]  # fmt: skip
        env = {"PATH": "/bin", "ZFS_MODULE_LOADING": "no", "ZPOOL_IMPORT_UDEV_TIMEOUT_MS": "0"}
        try:
            done = subprocess.run(argv, capture_output=True, env=env, check=False,
                                  timeout=ZPOOL_SECONDS)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DiskReadError(f"zpool {args[0]} did not return", where=where) from None
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()[-500:]
            raise DiskReadError(f"zpool {args[0]} failed: {message}", where=where)


class DatasetMounter:
    """``mounted.Mounter`` for a dataset: mount(2) of type zfs, source the dataset name."""

    def mount(self, fstype: str, devices: list[Path], options: list[str], target: Path) -> None:
        from guest.agent import sysguest
        from guest.agent.disks.mounted import MS_RDONLY

        sysguest.mount(str(devices[0]), str(target), fstype, MS_RDONLY, ",".join(options))

    def umount(self, target: Path) -> None:
        from guest.agent import sysguest

        sysguest.umount(str(target))


def read_zfs(ctx: DiskContext) -> BootFiles:
    """The boot files in the plan's dataset (``FS_READERS["zfs"]``)."""
    target = target_of(ctx.source.device, ctx.source.dataset)
    tools = ZfsTools(ctx.paths.root)
    if not tools.present():
        raise DiskReadError(
            "this guest image carries no ZFS (build it with the ZFS tree: docs/disks.md, ZFS)",
            where=target.dataset,
        )
    ctx.console.log(f"importing zfs pool {target.pool} read-only from {target.search}")

    def work(progress: Progress) -> BootFiles:
        progress.at("loading the zfs modules")
        tools.load_modules(target.dataset)
        progress.at(f"zpool import {target.pool}")
        tools.zpool("import", "-N", "-f", "-o", "readonly=on", "-o", "cachefile=none",
                    "-d", target.search, target.pool, where=target.pool)  # fmt: skip
        try:
            dataset = Path(target.dataset)
            with mounted(DatasetMounter(), "zfs", [dataset], ctx.mount_root, progress) as fs:
                files = read_boot_files(fs, ctx.source.kernel or "", ctx.source.initrd or "")
        except BaseException:
            with contextlib.suppress(DiskReadError):  # the first error is the one to say
                tools.zpool("export", target.pool, where=target.pool)
            raise
        progress.at(f"zpool export {target.pool}")
        tools.zpool("export", target.pool, where=target.pool)
        return files

    return under_deadline(work, ZFS_SECONDS, target.dataset)
