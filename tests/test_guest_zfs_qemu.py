"""Proxmox's ZFS root booted through the real two-pass flow (QEMU TCG, OVMF).

The zfs modules are compiled for the Debian cloud kernel from Debian's zfs-dkms
(publisher/media/zfsbuild.py, cached); the pool is made by OpenZFS's own ``zpool``/``zfs``
in the helper VM (tests/zfs_images.py): ``rpool``, lz4, the lab's Debian kernel and marker
initrd in ``rpool/ROOT/pve-1``'s ``/boot``. The lab's boot.iso carries the ZFS tree
(``initramfs.trees``); the signed plan names the dataset as upstream plans do
(``device = "rpool/ROOT/pve-1"``, ``fs = "zfs"``). The agent imports the pool read-only,
mounts the dataset, stages the kernel; the firmware boots it and its initrd prints the
marker and its command line.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.media import zfsbuild
from tests.helpers import push_plan, sign
from tests.qemu_lab import MARKER, OVMF_CODE, Lab, boot, make_lab
from tests.volume_images import tree_key
from tests.volume_vm import has_tools
from tests.zfs_images import DATASET, make_pool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make not installed"),
]
CMDLINE_TAIL = r"initrd=\EFI\Linux\pve-initrd console=ttyS0 panic=-1 pve-marker"


@pytest.fixture(scope="module")
def zfs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zfsbuild.guest_tree(tmp_path_factory.mktemp("zfs") / "tree")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, zfs_tree: Path) -> Iterator[Lab]:
    if not has_tools():
        pytest.skip("the helper VM needs mdadm/lvm2 (DEBIAN_PACKAGES)")
    extra = f'trees = [ {{ src = "{zfs_tree}", dest = "/" }} ]'
    with make_lab(tmp_path_factory.mktemp("qemu-zfs"), initramfs_extra=extra) as made:
        tree = made.root / "target-tree"
        disk = make_pool(tree, made.root / "zfs", tree_key(tree) + " zfs tar")
        yield dataclasses.replace(made, target=disk)


def _plan(disk: str) -> bytes:
    return (
        'default_target = "pve"\n'
        'target "pve" {\n  cmdline = "console=ttyS0 panic=-1 pve-marker"\n'
        f"  disk {{\n    {disk}\n  }}\n}}\n"
    ).encode()


def _push_signed(lab: Lab, plan: bytes) -> None:
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]


def test_proxmox_zfs_dataset_boots(lab: Lab) -> None:
    _push_signed(lab, _plan(f'fs = "zfs"\n    device = "{DATASET}"'))
    log, _vars_fd = boot(lab, "pve", MARKER, timeout=480)
    assert "importing zfs pool rpool read-only from /dev" in log, log[-3000:]
    assert MARKER in log, log[-3000:]
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(CMDLINE_TAIL), last_cmdline


def test_missing_dataset_is_fatal_naming_it(lab: Lab) -> None:
    """The pool imports, the dataset is not in it: a FATAL that names the dataset (the
    pool is exported again on the way out) and nothing is staged."""
    _push_signed(lab, _plan('fs = "zfs"\n    device = "rpool/ROOT/pve-9"'))
    log, _vars_fd = boot(lab, "pve-missing", "FATAL", timeout=480)
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "rpool/ROOT/pve-9" in fatal[0], log[-3000:]
    assert "cannot mount zfs read-only" in fatal[0], fatal[0]
    assert MARKER not in log
