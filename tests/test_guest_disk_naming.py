"""Kernel/initrd discovery as distributions name them, on real ext4 images (mkfs.ext4 -d):
Fedora/RHEL's ``initramfs-<v>.img``, upstream's fallback, /boot as its own partition, a
symlinked /boot/vmlinuz, and a kernel without an initrd (logged, not silent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest.agent.diskread import Ext4Reader
from guest.agent.disks.bootfiles import BootFiles, read_boot_files
from guest.agent.stage import DeviceRuns, FileData
from publisher.run import run

FEDORA_V = "6.5.6-300.fc39.x86_64"


def _bytes(data: FileData | None) -> bytes | None:
    return data.read() if isinstance(data, DeviceRuns) else data


def _read(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None = None,
          **kw: str) -> BootFiles:  # fmt: skip
    tree = tmp_path / "tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    for rel, target in (links or {}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).symlink_to(target)
    tree.mkdir(exist_ok=True)
    image = tmp_path / "fs.img"
    run(["mkfs.ext4", "-q", "-F", "-d", tree, image, "8M"])
    with Ext4Reader.open(image) as fs:
        boot = read_boot_files(fs, **kw)
        # contents are read while the device is open: DeviceRuns read lazily
        return BootFiles(
            _bytes(boot.kernel) or b"",
            boot.kernel_path,
            _bytes(boot.initrd),
            boot.initrd_path,
            boot.notes,
        )


def test_fedora_initramfs_dot_img_pairs_with_its_kernel(tmp_path: Path) -> None:
    kernel, initrd = os.urandom(5000), os.urandom(3000)
    boot = _read(
        tmp_path,
        {
            f"boot/vmlinuz-{FEDORA_V}": kernel,
            f"boot/initramfs-{FEDORA_V}.img": initrd,
            # rescue entries sort first; kdump images never pair
            "boot/vmlinuz-0-rescue-0123456789abcdef": b"rescue",
            "boot/initramfs-0-rescue-0123456789abcdef.img": b"rescue-initrd",
            f"boot/initramfs-{FEDORA_V}kdump.img": b"kdump",
        },
    )
    assert (boot.kernel_path, boot.initrd_path) == (
        f"/boot/vmlinuz-{FEDORA_V}",
        f"/boot/initramfs-{FEDORA_V}.img",
    )
    assert (boot.kernel, boot.initrd, boot.notes) == (kernel, initrd, ())


def test_boot_partition_with_a_symlinked_vmlinuz(tmp_path: Path) -> None:
    """The plan's device is /boot itself (RHEL's own /boot partition): kernels at the root."""
    kernel, initrd = os.urandom(4000), os.urandom(2000)
    boot = _read(
        tmp_path,
        {f"vmlinuz-{FEDORA_V}": kernel, f"initramfs-{FEDORA_V}.img": initrd},
        {"vmlinuz": f"vmlinuz-{FEDORA_V}"},
        kernel="/vmlinuz",
    )
    assert (boot.kernel_path, boot.initrd_path) == (
        f"/vmlinuz-{FEDORA_V}",
        f"/initramfs-{FEDORA_V}.img",
    )
    assert (boot.kernel, boot.initrd) == (kernel, initrd)


def test_absolute_symlink_to_boot_kernel(tmp_path: Path) -> None:
    boot = _read(
        tmp_path,
        {"boot/vmlinuz-6.1.0-28-amd64": b"k", "boot/initrd.img-6.1.0-28-amd64": b"i"},
        {"boot/vmlinuz": "/boot/vmlinuz-6.1.0-28-amd64"},
        kernel="/boot/vmlinuz",
    )
    assert boot.initrd_path == "/boot/initrd.img-6.1.0-28-amd64"


def test_fallback_to_newest_initrd_is_logged(tmp_path: Path) -> None:
    boot = _read(
        tmp_path,
        {
            "boot/vmlinuz-6.1.0-28-amd64": b"k",
            "boot/initrd.img-6.1.0-27-amd64": b"old",
            "boot/initrd.img-6.1.0-26-amd64": b"older",
        },
    )
    assert boot.initrd_path == "/boot/initrd.img-6.1.0-27-amd64"
    assert boot.initrd == b"old"
    assert len(boot.notes) == 1 and "using /boot/initrd.img-6.1.0-27-amd64" in boot.notes[0]


def test_kernel_without_initrd_is_logged_not_silent(tmp_path: Path) -> None:
    boot = _read(tmp_path, {"boot/vmlinuz-6.1.0-28-amd64": b"k", "boot/config-6.1": b"c"})
    assert (boot.initrd, boot.initrd_path) == (None, None)
    assert boot.notes == ("no initrd next to /boot/vmlinuz-6.1.0-28-amd64: the kernel boots"
                          " without one",)  # fmt: skip


@pytest.mark.parametrize(
    "name", ["initrd.img-{v}", "initramfs-{v}", "initrd-{v}", "initramfs.{v}", "initrd-{v}.img"]
)
def test_every_prefix_pairs(tmp_path: Path, name: str) -> None:
    boot = _read(tmp_path, {"boot/Image-6.1": b"k", "boot/" + name.format(v="6.1"): b"i"})
    assert boot.initrd_path == "/boot/" + name.format(v="6.1")
    assert boot.notes == ()
