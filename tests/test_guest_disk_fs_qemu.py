"""The disks real fleets run, booted for real: the lab's boot.iso (the agent, with the
recipe's on-demand xfs/btrfs modules) stages a Debian cloud kernel from a Fedora-style
btrfs (``root`` subvolume under the top level), a RHEL-style xfs /boot and a btrfs RAID1
over two disks (images by mkfs.xfs / mkfs.btrfs, cached by recipe hash:
tests/disk_images.py); the firmware then boots it and its tiny initrd prints the marker
and its command line (QEMU TCG, x86_64)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.disk_images import boot_layouts
from tests.qemu_lab import MARKER, OVMF_CODE, Lab, boot_disk_layout, make_lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("disk-fs-lab")) as made:
        yield made


def _boots(lab: Lab, name: str) -> str:
    log = boot_disk_layout(lab, name, boot_layouts)
    assert MARKER in log, log[-3000:]
    # the target kernel (second boot) got the load options Boot0001 carries
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(
        rf"initrd=\EFI\Linux\{name}-initrd console=ttyS0 panic=-1 {name}-marker"
    ), last_cmdline
    return log


def test_fedora_btrfs_root_subvolume_boots(lab: Lab) -> None:
    assert "mounting LABEL=fedora (vdc) btrfs read-only" in _boots(lab, "fedora")


def test_rhel_xfs_boot_partition_boots(lab: Lab) -> None:
    assert "mounting LABEL=boot (vdc) xfs read-only" in _boots(lab, "rhel")


def test_btrfs_raid1_over_two_disks_boots(lab: Lab) -> None:
    assert "mounting LABEL=mirror (vdc, vdd) btrfs read-only" in _boots(lab, "mirror")
