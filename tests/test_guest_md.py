"""md RAID1 (metadata 1.2) read in userland (guest/agent/volumes/md.py): arrays made by
``mdadm --create`` in the helper VM (tests/volume_vm.py; cached), holding an ext4 made by
mkfs.ext4. Marked slow: a cold cache boots the helper VM once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest.agent import volumes
from guest.agent.blockdev import BlockDevice, DeviceNotFoundError
from guest.agent.diskread import Ext4Reader
from guest.agent.disks.bootfiles import read_boot_files
from guest.agent.stage import DeviceRuns
from guest.agent.volumes import md
from guest.contract.errors import CloudbootError
from tests.volume_images import MD_RAID1, SMALL_KERNEL, LogLines, small_volumes
from tests.volume_vm import has_tools

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_tools(), reason="mdadm/lvm2 not installed"),
]

KERNEL = SMALL_KERNEL


@pytest.fixture(scope="module")
def raid(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], bytes]:
    return small_volumes(tmp_path_factory.mktemp("md"), "mdroot", MD_RAID1, (24, 24))


def _devices(disks: list[Path]) -> list[BlockDevice]:
    return [
        BlockDevice(f"vd{chr(ord('b') + i)}", d, f"vd{chr(ord('b') + i)}")
        for i, d in enumerate(disks)
    ]


def _read(spec: str, devices: list[BlockDevice]) -> tuple[volumes.Opened, object]:
    with (
        volumes.open_spec(spec, devices, None, LogLines()) as opened,
        Ext4Reader(opened.stream, opened.where) as fs,
    ):
        files = volumes.resolved(read_boot_files(fs, "/" + KERNEL), opened)
    return opened, files.kernel


@pytest.mark.parametrize("spec", ["/dev/md/root", "/dev/md/cloudboot:root", "LABEL=mdroot"])
def test_the_array_is_found_and_its_kernel_staged_from_a_member(
    raid: tuple[list[Path], bytes], spec: str
) -> None:
    disks, kernel = raid
    _opened, data = _read(spec, _devices(disks))
    # the kernel is copied device -> ESP from a member, not through Python
    assert isinstance(data, DeviceRuns) and data.device in disks
    assert data.read() == kernel


def test_a_degraded_mirror_still_reads(raid: tuple[list[Path], bytes], tmp_path: Path) -> None:
    disks, kernel = raid
    _opened, data = _read("/dev/md/root", _devices([disks[1]]))
    assert isinstance(data, DeviceRuns) and data.device == disks[1] and data.read() == kernel


def test_a_damaged_superblock_is_a_located_error(
    raid: tuple[list[Path], bytes], tmp_path: Path
) -> None:
    disks, _kernel = raid
    bad = tmp_path / "bad.raw"
    shutil.copyfile(disks[0], bad)
    with open(bad, "r+b") as f:
        f.seek(md.SUPERBLOCK_OFFSET + 40)  # in the array name
        f.write(b"X")
    with pytest.raises(md.MdError, match="checksum does not match") as caught:
        md.read_member(bad)
    assert str(bad) in str(caught.value)


def test_unknown_names_list_what_was_seen(raid: tuple[list[Path], bytes]) -> None:
    disks, _kernel = raid
    with pytest.raises(
        CloudbootError,
        match=r"no md raid1 array or LVM volume is named so "
        r"\(volumes seen: /dev/md/cloudboot:root\)",
    ):
        _read("/dev/md/nope", _devices(disks))
    with pytest.raises(DeviceNotFoundError, match="no block device or volume matches"):
        _read("LABEL=nope", _devices(disks))
