"""ZFS disk targets without a VM: the dataset as upstream plans and disk mode write it, the
names that never reach ``zpool``'s argv, and the error of an image without ZFS. The real
import and mount are tests/test_guest_zfs_qemu.py (the host kernel has no zfs)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from guest.agent.console import Console
from guest.agent.disks import discover
from guest.agent.disks.bootfiles import DiskReadError
from guest.agent.disks.cmdline import disk_source
from guest.agent.disks.zfs import ZfsTarget, target_of
from guest.agent.machine import Paths
from guest.contract.plan import DiskSource
from tests.disk_images import sys_tree


def test_upstream_plan_puts_the_dataset_in_device() -> None:
    assert target_of("rpool/ROOT/pve-1", None) == ZfsTarget("rpool/ROOT/pve-1", "rpool", "/dev")


def test_dataset_next_to_the_pools_device_searches_only_there() -> None:
    assert target_of("/dev/vdc", "rpool/ROOT/pve-1") == ZfsTarget(
        "rpool/ROOT/pve-1", "rpool", "/dev/vdc"
    )


def test_disk_mode_names_the_pool_and_the_dataset() -> None:
    raw = {"cloudboot.disk": "rpool", "cloudboot.disk.fs": "zfs",
           "cloudboot.disk.device": "rpool/ROOT/pve-1"}  # fmt: skip
    source = disk_source(raw)
    assert target_of(source.device, source.dataset) == ZfsTarget(
        "rpool/ROOT/pve-1", "rpool", "/dev"
    )


@pytest.mark.parametrize(
    ("device", "dataset", "says"),
    [
        ("LABEL=rpool", None, "needs the dataset"),
        ("-o/ROOT", None, "not a ZFS dataset name"),
        ("rpool/ROOT/pve-1; reboot", None, "not a ZFS dataset name"),
        ("rpool//x", None, "not a ZFS dataset name"),
        ("", None, "not a ZFS dataset name"),
        ("r" * 256, None, "not a ZFS dataset name"),
        ("tank", "rpool/ROOT/pve-1", "the pool's /dev/... or its name"),
    ],
)
def test_bad_names_are_located_errors(device: str, dataset: str | None, says: str) -> None:
    with pytest.raises(DiskReadError) as err:
        target_of(device, dataset)
    assert says in err.value.message
    assert err.value.where == device


def test_image_without_zfs_says_so_naming_the_dataset(tmp_path: Path) -> None:
    sys_tree(tmp_path, {})
    out = io.StringIO()
    source = DiskSource(device="rpool/ROOT/pve-1", fs="zfs")
    with pytest.raises(DiskReadError) as err:
        discover.read_disk(source, Paths(tmp_path), Console([out]))
    assert "rpool/ROOT/pve-1" in str(err.value)
    assert "carries no ZFS" in str(err.value)
