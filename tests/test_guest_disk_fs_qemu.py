"""The disks real fleets run, booted for real: the lab's boot.iso (the agent, with the
recipe's on-demand xfs/btrfs modules) stages a Debian cloud kernel from a Fedora-style
btrfs (``root`` subvolume under the top level), a RHEL-style xfs /boot and a btrfs RAID1
over two disks (images by mkfs.xfs / mkfs.btrfs, cached by recipe hash:
tests/disk_images.py); the firmware then boots it and its tiny initrd prints the marker
and its command line (QEMU TCG, x86_64)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.disk_images import boot_layouts, image_for
from tests.qemu_lab import (
    MARKER,
    OVMF_CODE,
    Lab,
    boot,
    boot_disk_layout,
    build_iso,
    make_lab,
    target_kernel,
)

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


def test_disk_mode_on_the_command_line_boots_btrfs_without_network_or_plan(lab: Lab) -> None:
    """Upstream's disk mode: a boot.iso whose command line names the disk, not a plan."""
    cmdline = (
        "cloudboot.exit=reboot cloudboot.disk=LABEL=fedora cloudboot.disk.fs=btrfs"
        ' cloudboot.cmdline="console=ttyS0 panic=-1 diskmode-marker" console=ttyS0'
    )
    where = lab.root / "disk-mode"
    where.mkdir()
    (where / "cosign.pub").write_bytes(lab.key_pem)  # the recipe names ../cosign.pub
    iso = build_iso(where, "guest-agent", cmdline)
    layout, _disk = boot_layouts(*target_kernel(lab))["fedora"]
    (image,) = image_for(layout)
    here = dataclasses.replace(lab, iso=iso, target=image)
    log, _vars_fd = boot(here, "disk-mode-boot", MARKER)
    assert MARKER in log, log[-3000:]
    assert "disk mode: cloudboot.disk=LABEL=fedora fs=btrfs (no network, no plan)" in log
    assert "step network" not in log and "step fetch" not in log
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(
        r"initrd=\EFI\Linux\disk-initrd console=ttyS0 panic=-1 diskmode-marker"
    )
