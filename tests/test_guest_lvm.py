"""LVM2 linear logical volumes read in userland (guest/agent/volumes/lvm.py): a VG made by
``pvcreate``/``vgcreate``/``lvcreate`` in the helper VM (tests/volume_vm.py; cached)
holding an ext4 made by mkfs.ext4. Marked slow: a cold cache boots the helper VM once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest.agent import volumes
from guest.agent.blockdev import BlockDevice
from guest.agent.diskread import Ext4Reader
from guest.agent.disks.bootfiles import read_boot_files
from guest.agent.stage import DeviceRuns
from guest.agent.volumes import lvm
from guest.contract.errors import CloudbootError
from tests.volume_images import LVM_LINEAR, SMALL_KERNEL, LogLines, small_volumes
from tests.volume_vm import has_tools

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_tools(), reason="mdadm/lvm2 not installed"),
]

KERNEL = SMALL_KERNEL


@pytest.fixture(scope="module")
def vg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    (disk,), kernel = small_volumes(tmp_path_factory.mktemp("lvm"), "lvroot", LVM_LINEAR, (48,))
    return disk, kernel


def _read(spec: str, disk: Path) -> object:
    devices = [BlockDevice("vdb", disk, "vdb")]
    with (
        volumes.open_spec(spec, devices, None, LogLines()) as opened,
        Ext4Reader(opened.stream, opened.where) as fs,
    ):
        return volumes.resolved(read_boot_files(fs, "/" + KERNEL), opened).kernel


@pytest.mark.parametrize("spec", ["/dev/vg0/root", "/dev/mapper/vg0-root", "LABEL=lvroot"])
def test_the_lv_is_found_and_its_kernel_staged_from_the_pv(
    vg: tuple[Path, bytes], spec: str
) -> None:
    disk, kernel = vg
    data = _read(spec, disk)
    # two segments (lvextend), both on the one PV: still device runs, mapped onto it
    assert isinstance(data, DeviceRuns) and data.device == disk
    assert data.read() == kernel


def test_the_metadata_has_two_segments(vg: tuple[Path, bytes]) -> None:
    disk, _kernel = vg
    pv = lvm.read_pv(disk)
    assert pv is not None
    lvs = {lv.name: lv for lv in lvm.logical_volumes([pv])}
    assert sorted(lvs) == ["gap", "root"] and lvs["root"].vg == "vg0"
    root, gap = lvs["root"].pieces, lvs["gap"].pieces
    assert len(root) == 2 and len(gap) == 1
    assert root[0].offset + root[0].length == gap[0].offset  # the gap lies between
    assert gap[0].offset + gap[0].length == root[1].offset


def test_a_damaged_metadata_area_is_a_located_error(vg: tuple[Path, bytes], tmp_path: Path) -> None:
    disk, _kernel = vg
    bad = tmp_path / "bad.raw"
    shutil.copyfile(disk, bad)
    pv = lvm.read_pv(disk)
    assert pv is not None
    with open(bad, "r+b") as f:
        f.seek(4096 + 4)  # the metadata area header's magic (the first area is at 4 KiB)
        f.write(b"XXXX")
    with pytest.raises(lvm.LvmError, match="bad magic") as caught:
        lvm.read_pv(bad)
    assert str(bad) in str(caught.value)


def test_an_unknown_lv_lists_what_was_seen(vg: tuple[Path, bytes]) -> None:
    disk, _kernel = vg
    with pytest.raises(CloudbootError, match=r"volumes seen: /dev/vg0/root"):
        _read("/dev/vg0/nope", disk)
