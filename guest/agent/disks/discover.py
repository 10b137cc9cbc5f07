"""A plan's disk source to its kernel and initrd: devices, volume hooks, the reader for the
filesystem (docs/disks.md).

The seam with the volume layers (LUKS, LVM, md, ZFS): before the plan's ``device`` is
resolved, every hook named in ``VOLUME_HOOKS`` runs with a ``DiskContext`` and returns the
block devices it made (``/dev/mapper/...``, ``/dev/md0``), which are then resolved like
any other. A layer that reads a filesystem of its own (ZFS datasets) adds a reader to
``FS_READERS``. Both name ``module:function`` strings, imported only when a disk target
runs, so the plain ext4 boot imports none of them.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from guest.agent import blockdev
from guest.agent.blockdev import BlockDevice
from guest.agent.disks.bootfiles import BootFiles, DiskReadError, default_kernel, read_boot_files

if TYPE_CHECKING:
    from guest.agent.console import Console
    from guest.agent.disks.mounted import MountedFs, Mounter
    from guest.agent.machine import Paths
    from guest.contract.plan import DiskSource

#: Volume layers, run in order before the device is resolved: ``(DiskContext) -> devices``.
VOLUME_HOOKS: list[str] = []
#: Filesystem readers: ``(DiskContext) -> BootFiles``.
FS_READERS: dict[str, str] = {
    "ext4": "guest.agent.disks.discover:read_ext4",
    "xfs": "guest.agent.disks.discover:read_mounted",
    "btrfs": "guest.agent.disks.discover:read_mounted",
    "zfs": "guest.agent.disks.zfs:read_zfs",
}
#: Where a btrfs root subvolume holds /boot when the default subvolume is the top level
#: (Fedora's ``root``, Ubuntu's ``@``).
BTRFS_ROOT_SUBVOLUMES = ("/root", "/@")


@dataclass(frozen=True)
class DiskContext:
    """What a volume hook or a reader gets: the source, the devices so far, the machine."""

    source: DiskSource
    devices: tuple[BlockDevice, ...]
    paths: Paths
    console: Console
    mounter: Mounter | None = None

    def resolve(self) -> BlockDevice:
        return blockdev.resolve(self.source.device, self.devices)

    @property
    def mount_root(self) -> Path:
        return self.paths.root / "run/cloudboot/disk"


def _load(name: str) -> Callable[[DiskContext], object]:
    module, _, function = name.partition(":")
    return cast(Callable[[DiskContext], object], getattr(importlib.import_module(module), function))


def read_disk(
    source: DiskSource, paths: Paths, console: Console, mounter: Mounter | None = None
) -> BootFiles:
    """The boot files of ``source``: hooks add devices, the fs's reader reads them."""
    ctx = DiskContext(source, tuple(blockdev.scan(paths.sys, paths.dev)), paths, console, mounter)
    for hook in VOLUME_HOOKS:
        added = cast(Sequence[BlockDevice], _load(hook)(ctx))
        ctx = replace(ctx, devices=(*ctx.devices, *added))
    reader = FS_READERS.get(source.fs)
    if reader is None:
        raise DiskReadError(
            f"fs {source.fs!r} is not readable by this guest (it reads "
            + ", ".join(sorted(FS_READERS))
            + ")",
            where=source.device,
        )
    files = cast(BootFiles, _load(reader)(ctx))
    for note in files.notes:
        console.warn(note)
    console.log(f"kernel {files.kernel_path}, initrd {files.initrd_path or '-'}")
    return files


def read_ext4(ctx: DiskContext) -> BootFiles:
    """ext4 in userland (``guest.agent.diskread``): nothing mounted. The device is opened
    through the userland volume layer (``guest.agent.volumes``: LUKS1/2 unlocked, md
    RAID1 and LVM linear volumes assembled), which hands the reader a stream."""
    from guest.agent import volumes
    from guest.agent.diskread import Ext4Reader

    with (
        volumes.open_spec(
            ctx.source.device, list(ctx.devices), ctx.source.luks_passphrase, ctx.console
        ) as opened,
        Ext4Reader(opened.stream, opened.where) as fs,
    ):
        files = read_boot_files(fs, ctx.source.kernel or "", ctx.source.initrd or "")
        return volumes.resolved(files, opened)


def read_mounted(ctx: DiskContext) -> BootFiles:
    """xfs or btrfs through the kernel's driver, read-only, under one deadline."""
    from guest.agent.disks import kernelvol, mounted

    fstype = ctx.source.fs
    # an LVM LV, an md array or a LUKS volume: a read-only device-mapper device
    mapping = kernelvol.plan(ctx)
    if mapping is None:
        device = ctx.resolve()
        nodes, where = [device.node], str(device.node)
        if fstype == "btrfs":
            from guest.agent.disks import btrfs

            nodes = [d.node for d in btrfs.members(device, ctx.devices)]
        shown = ", ".join(str(n.name) for n in nodes)
    else:
        nodes, where, shown = [], ctx.source.device, mapping.what
    ctx.console.log(f"mounting {ctx.source.device} ({shown}) {fstype} read-only")
    mounter = ctx.mounter or mounted.KernelMounter()

    def work(progress: mounted.Progress) -> BootFiles:
        with contextlib.ExitStack() as stack:
            if mapping is not None:
                mapper = kernelvol.KernelMapper(ctx.paths.dev)
                nodes.append(stack.enter_context(kernelvol.mapped(mapping, mapper, progress)))
            with mounted.mounted(mounter, fstype, nodes, ctx.mount_root, progress) as fs:
                return _boot_files(fs, ctx.source) if fstype == "btrfs" else _read(fs, ctx.source)

    try:
        return mounted.under_deadline(work, mounted.MOUNT_SECONDS, where)
    finally:
        if mapping is not None:
            mapping.wipe()


def _read(fs: MountedFs, source: DiskSource) -> BootFiles:
    return read_boot_files(fs, source.kernel or "", source.initrd or "")


def _boot_files(fs: MountedFs, source: DiskSource) -> BootFiles:
    """btrfs: the default subvolume first, then the usual root subvolumes under it; a
    given kernel path is looked up the same way (``/boot/vmlinuz`` in Fedora's ``root``),
    so its absolute symlinks resolve against the subvolume that is ``/`` when it boots."""
    for sub in ("", *BTRFS_ROOT_SUBVOLUMES):
        if sub and not fs.exists(sub):
            continue
        view = fs.view(sub) if sub else fs
        if source.kernel:
            if view.exists(source.kernel):
                return _read(view, source)
            continue
        try:
            default_kernel(view)
        except DiskReadError:
            continue
        return _read(view, source)
    looked = ", ".join(("the default subvolume", *BTRFS_ROOT_SUBVOLUMES))
    if source.kernel:
        raise DiskReadError(f"{source.kernel} is in none of {looked}", where=fs.where)
    raise DiskReadError(
        f"no kernel found in {looked} (give the plan's disk a kernel path)", where=fs.where
    )
