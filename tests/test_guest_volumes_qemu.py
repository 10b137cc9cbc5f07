"""Volume layouts booted through the real two-pass flow (QEMU TCG, OVMF): the lab's ext4
target (a Debian cloud kernel and a marker initrd) inside LUKS2 and md RAID1.

- LUKS2 (Argon2id): the target encrypted with ``cryptsetup reencrypt --encrypt`` (no
  device-mapper on the host); the signed plan names it by device and carries the
  passphrase. Right passphrase: unlocked in userland, staged, and the target's marker and
  cmdline reach the serial log. Wrong passphrase: a FATAL line naming the device, and
  neither passphrase anywhere in the log.
- md RAID1 (metadata 1.2): two members made by ``mdadm --create`` in the helper VM
  (tests/volume_vm.py), the plan names ``/dev/md/root``.
- LVM2: a linear LV in two segments made by ``lvcreate``/``lvextend`` in the helper VM,
  the plan names ``/dev/vg0/root`` (ext4 inside: the RHEL layout's xfs is the fs
  branch's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.helpers import push_plan, sign
from tests.qemu_lab import MARKER, OVMF_CODE, Lab, boot, make_lab
from tests.volume_images import LVM_LAB, MD_RAID1, disk_plan, has_cryptsetup, make_luks, tree_key
from tests.volume_vm import has_tools, make_volumes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]

SECRET = "luks-in-the-lab-0b7e"
WRONG = "not-the-passphrase-93c1"
CMDLINE_TAIL = r"initrd=\EFI\Linux\debian-initrd console=ttyS0 panic=-1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-volumes")) as made:
        yield made


def _push_signed(lab: Lab, plan: bytes) -> None:
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]


def _booted(log: str) -> None:
    assert MARKER in log, log[-3000:]
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(CMDLINE_TAIL)


@pytest.fixture(scope="module")
def luks_lab(lab: Lab) -> Lab:
    if not has_cryptsetup():
        pytest.skip("cryptsetup not installed")
    luks = make_luks(lab.target, lab.root / "target.luks2", SECRET.encode(), sector_size=512)
    return dataclasses.replace(lab, target=luks)


def test_luks2_target_boots(luks_lab: Lab) -> None:
    _push_signed(luks_lab, disk_plan("/dev/vdc", SECRET))
    log, _vars_fd = boot(luks_lab, "luks2", MARKER, timeout=360)
    assert "LUKS2 volume" in log and "LUKS key slot 0 opened" in log, log[-3000:]
    # the guest kernel decrypts (dm-crypt); the userland stream is the fallback
    assert "LUKS data decrypted by dm-crypt (/dev/dm-0)" in log, log[-3000:]
    _booted(log)
    assert SECRET not in log


def test_wrong_passphrase_is_fatal_naming_the_device(luks_lab: Lab) -> None:
    _push_signed(luks_lab, disk_plan("/dev/vdc", WRONG))
    log, _vars_fd = boot(luks_lab, "luks2-wrong", "FATAL", timeout=360)
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "/dev/vdc" in fatal[0] and "no LUKS key slot opens" in fatal[0], log[-3000:]
    assert MARKER not in log
    assert WRONG not in log and SECRET not in log


def test_md_raid1_target_boots(lab: Lab) -> None:
    if not has_tools():
        pytest.skip("mdadm/lvm2 not installed")
    key = tree_key(lab.root / "target-tree")
    disks = make_volumes(MD_RAID1, lab.target, (80, 80), lab.root / "md", payload_key=key)
    md_lab = dataclasses.replace(lab, target=disks[0], more_targets=(disks[1],))
    _push_signed(md_lab, disk_plan("/dev/md/root"))
    log, _vars_fd = boot(md_lab, "md-raid1", MARKER, timeout=360)
    assert "reading /dev/md/root (md raid1 from /dev/vd" in log, log[-3000:]
    _booted(log)


def test_lvm_target_boots(lab: Lab) -> None:
    """A linear LV in two segments (another LV between them) on one PV."""
    if not has_tools():
        pytest.skip("mdadm/lvm2 not installed")
    key = tree_key(lab.root / "target-tree")
    (disk,) = make_volumes(LVM_LAB, lab.target, (96,), lab.root / "lvm-disks", payload_key=key)
    _push_signed(lab, disk_plan("/dev/vg0/root"))
    log, _vars_fd = boot(dataclasses.replace(lab, target=disk), "lvm", MARKER, timeout=360)
    assert "reading /dev/vg0/root (LVM vg0/root on /dev/vdc)" in log, log[-3000:]
    _booted(log)
