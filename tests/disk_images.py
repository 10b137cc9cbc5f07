"""Target disks as distributions lay them out, made by Debian's own tools (mkfs.xfs,
mkfs.btrfs -r / btrfs subvolume, mkfs.ext4 -d), cached by a hash of their recipe; and the
host's loop mounter, the one machine edge the xfs/btrfs reader needs on the host.

Images are built on the host with loop mounts (root, loop devices and the host kernel's
xfs and btrfs work on these machines: docs/disks.md). A cached image is only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from publisher.media.debs import user_cache_dir
from publisher.run import run

MIB = 1 << 20
#: The tools' minimum sizes (mkfs.xfs: 300 MB; mkfs.btrfs: 114294784 bytes a device).
SIZES = {"xfs": 320 * MIB, "btrfs": 128 * MIB, "ext4": 64 * MIB}
CACHE = user_cache_dir("disk-images")
_RECIPE_VERSION = 1


@dataclass(frozen=True)
class Layout:
    """One distribution's disk: files (path -> bytes) and symlinks in the tree that holds
    /boot, and how the filesystem is made around it."""

    name: str
    fs: str
    files: dict[str, bytes]
    links: dict[str, str] = field(default_factory=dict)
    label: str = ""
    #: btrfs: subvolumes to create; the tree goes into ``tree_subvolume`` ("" = top level).
    subvolumes: tuple[str, ...] = ()
    tree_subvolume: str = ""
    default_subvolume: str = ""
    #: btrfs RAID1 over this many devices (data and metadata).
    raid1_devices: int = 0

    def digest(self) -> str:
        recipe = {
            "v": _RECIPE_VERSION,
            "name": self.name,
            "fs": self.fs,
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(self.files.items())},
            "links": self.links,
            "label": self.label,
            "subvolumes": self.subvolumes,
            "tree": self.tree_subvolume,
            "default": self.default_subvolume,
            "raid1": self.raid1_devices,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def loop_devices(images: list[Path], *, readonly: bool) -> Iterator[list[str]]:
    loops: list[str] = []
    try:
        for image in images:
            ro = ["--read-only"] if readonly else []
            out = run(["losetup", "--find", "--show", *ro, image], capture=True)
            loops.append(out.stdout.decode().strip())
        yield loops
    finally:
        for loop in loops:
            run(["losetup", "-d", loop], check=False)


def _fill(tree: Path, layout: Layout) -> None:
    for rel, data in layout.files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    for rel, target in layout.links.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).symlink_to(target)


def _build(layout: Layout, images: list[Path], work: Path) -> None:
    for image in images:
        with open(image, "wb") as f:
            f.truncate(SIZES[layout.fs])
    label = ["-L", layout.label] if layout.label else []
    if layout.fs == "xfs":
        run(["mkfs.xfs", "-q", "-f", *label, images[0]])
    elif layout.fs == "btrfs":
        raid = ["-d", "raid1", "-m", "raid1"] if layout.raid1_devices else []
        run(["mkfs.btrfs", "-q", "-f", *label, *raid, *images])
    else:
        raise ValueError(layout.fs)
    mnt = work / "mnt"
    mnt.mkdir()
    with loop_devices(images, readonly=False) as loops:
        extra = ",".join(f"device={d}" for d in loops[1:])
        run(["mount", "-t", layout.fs, *(["-o", extra] if extra else []), loops[0], mnt])
        try:
            for sub in layout.subvolumes:
                run(["btrfs", "-q", "subvolume", "create", mnt / sub])
            _fill(mnt / layout.tree_subvolume if layout.tree_subvolume else mnt, layout)
            if layout.default_subvolume:
                run(["btrfs", "subvolume", "set-default", mnt / layout.default_subvolume])
        finally:
            run(["umount", mnt])


def image_for(layout: Layout) -> list[Path]:
    """The layout's image(s) from the cache, built first when missing (atomically)."""
    count = max(layout.raid1_devices, 1)
    final = CACHE / f"{layout.name}-{layout.digest()}"
    images = [final / f"disk{i}.img" for i in range(count)]
    if all(i.exists() for i in images):
        return images
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f".build-{os.getpid()}-{layout.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _build(layout, [work / i.name for i in images], work)
        (work / "mnt").rmdir()
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return images


class LoopMounter:
    """Mount image files read-only through loop devices, with the options the guest uses."""

    def __init__(self) -> None:
        self._stacks: dict[Path, contextlib.ExitStack] = {}
        self.calls: list[tuple[str, list[str]]] = []

    def mount(self, fstype: str, devices: list[Path], options: list[str], target: Path) -> None:
        from guest.agent.disks.mounted import mount_data

        stack = contextlib.ExitStack()
        loops = stack.enter_context(loop_devices(devices, readonly=True))
        data = mount_data(fstype, [Path(d) for d in loops], options)
        self.calls.append((fstype, options))
        try:
            run(["mount", "-t", fstype, "-o", ",".join(filter(None, ["ro", data])),
                 loops[0], target])  # fmt: skip
        except Exception as exc:
            stack.close()
            raise OSError(5, f"mount failed: {exc}") from exc
        self._stacks[target] = stack

    def umount(self, target: Path) -> None:
        run(["umount", target])
        self._stacks.pop(target).close()


def sys_tree(root: Path, disks: dict[str, Path]) -> None:
    """``sys/block/<name>`` and ``dev/<name>`` -> image, for whole-disk filesystems."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name, image in disks.items():
        (root / "sys/block" / name).mkdir(parents=True)
        os.symlink(image, root / "dev" / name)


def boot_layouts(v: str, kernel: bytes, initrd: bytes) -> dict[str, tuple[Layout, str]]:
    """The layouts booted in QEMU (tests and bench/disk_read.py), each with the plan's disk
    block body: a kernel ``v`` and its initrd where each distribution puts them."""
    fedora = Layout("qemu-fedora-btrfs", "btrfs",
                    {f"boot/vmlinuz-{v}": kernel, f"boot/initramfs-{v}.img": initrd},
                    label="fedora", subvolumes=("root", "home"), tree_subvolume="root")  # fmt: skip
    rhel = Layout("qemu-rhel-xfs", "xfs", {f"vmlinuz-{v}": kernel, f"initramfs-{v}.img": initrd},
                  label="boot")  # fmt: skip
    mirror = Layout("qemu-btrfs-raid1", "btrfs",
                    {f"boot/vmlinuz-{v}": kernel, f"boot/initrd.img-{v}": initrd},
                    label="mirror", raid1_devices=2)  # fmt: skip
    return {
        "fedora": (fedora, 'device = "LABEL=fedora"\n  fs = "btrfs"'),
        "rhel": (rhel, 'device = "LABEL=boot"\n  fs = "xfs"'),
        "mirror": (mirror, 'device = "LABEL=mirror"\n  fs = "btrfs"'),
    }
