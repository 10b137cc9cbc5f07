"""xfs on volumes, booted through the real two-pass flow (QEMU TCG, OVMF): the volume is
found and opened in userland and handed to the guest kernel's xfs driver as a read-only
device-mapper device (guest/agent/disks/kernelvol.py, docs/disks.md).

- The RHEL layout (tests/rhel_image.py): one GPT disk, xfs ``/boot`` partition with
  RHEL's naming, LVM PV with the xfs root LV in two segments. A plan naming ``/boot`` by
  label, and one naming the LV as ``/dev/rhel/root`` (a dm ``linear`` table of two
  targets).
- xfs on md RAID1 (metadata 1.2, ``mdadm --create`` in the helper VM), named
  ``/dev/md/root``: a dm ``linear`` table of one target, the member from its data offset.
- xfs inside LUKS2 (512-byte sectors as xfs's own; Argon2id), made by ``cryptsetup reencrypt
  --encrypt``: a dm ``crypt`` table with the key userland derived; the passphrase is
  nowhere in the log.

Each boot ends with the staged target's marker and its command line on the serial log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.disk_images import Layout, image_for
from tests.qemu_lab import MARKER, OVMF_CODE, Lab, boot_disk_plan, make_lab, target_kernel
from tests.volume_images import MD_RAID1, has_cryptsetup, make_luks
from tests.volume_vm import has_tools, make_volumes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]

SECRET = "xfs-in-luks2-5e1a"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("kernelvol-lab")) as made:
        yield made


@pytest.fixture(scope="module")
def rhel(lab: Lab) -> Path:
    if not has_tools():
        pytest.skip("mdadm/lvm2 not installed")
    from tests.rhel_image import rhel_disk

    return rhel_disk(lab.root / "rhel", *target_kernel(lab))


def _booted(log: str, name: str) -> None:
    assert MARKER in log, log[-3000:]
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(
        rf"initrd=\EFI\Linux\{name}-initrd console=ttyS0 panic=-1 {name}-marker"
    ), last_cmdline


def test_rhel_root_lv_xfs_boots_through_a_device_mapper_linear_table(lab: Lab, rhel: Path) -> None:
    log = boot_disk_plan(lab, "rhelroot", 'device = "/dev/rhel/root"\n  fs = "xfs"', [rhel])
    assert "mounting /dev/rhel/root (LVM rhel/root on /dev/vdc2, 2 segment(s)) xfs" in log, log[
        -3000:
    ]
    _booted(log, "rhelroot")
    v = target_kernel(lab)[0]
    assert f"kernel /boot/vmlinuz-{v}, initrd /boot/initramfs-{v}.img" in log


def test_rhel_boot_partition_next_to_the_pv_boots(lab: Lab, rhel: Path) -> None:
    log = boot_disk_plan(lab, "rhelboot", 'device = "LABEL=boot"\n  fs = "xfs"', [rhel])
    assert "mounting LABEL=boot (vdc1) xfs read-only" in log, log[-3000:]
    _booted(log, "rhelboot")
    v = target_kernel(lab)[0]
    assert f"kernel /vmlinuz-{v}, initrd /initramfs-{v}.img" in log


def _plain_xfs(lab: Lab) -> Path:
    """An xfs holding the lab's kernel in /boot, Debian's naming (cached by recipe)."""
    v, kernel, initrd = target_kernel(lab)
    return image_for(_xfs_layout(v, kernel, initrd))[0]


def _xfs_layout(v: str, kernel: bytes, initrd: bytes) -> Layout:
    return Layout("volume-xfs-plain", "xfs",
                  {f"boot/vmlinuz-{v}": kernel, f"boot/initrd.img-{v}": initrd})  # fmt: skip


def test_xfs_on_md_raid1_boots_through_a_device_mapper_linear_table(lab: Lab) -> None:
    if not has_tools():
        pytest.skip("mdadm/lvm2 not installed")
    key = f"volume-xfs-plain {_xfs_layout(*target_kernel(lab)).digest()}"
    disks = make_volumes(MD_RAID1, _plain_xfs(lab), (352, 352), lab.root / "md-xfs",
                         payload_key=key)  # fmt: skip
    log = boot_disk_plan(lab, "mdxfs", 'device = "/dev/md/root"\n  fs = "xfs"', disks)
    assert "mounting /dev/md/root (md raid1 from /dev/vd" in log, log[-3000:]
    assert "1 segment(s)) xfs read-only" in log, log[-3000:]
    _booted(log, "mdxfs")


def test_xfs_in_luks2_boots_through_dm_crypt(lab: Lab) -> None:
    if not has_cryptsetup():
        pytest.skip("cryptsetup not installed")
    disk = make_luks(_plain_xfs(lab), lab.root / "xfs.luks2", SECRET.encode(), sector_size=512)
    body = f'device = "/dev/vdc"\n  fs = "xfs"\n  luks-passphrase = "{SECRET}"'
    log = boot_disk_plan(lab, "luksxfs", body, [disk])
    assert "LUKS key slot 0 opened" in log, log[-3000:]
    assert "mounting /dev/vdc (LUKS2 on /dev/vdc) xfs read-only" in log, log[-3000:]
    _booted(log, "luksxfs")
    assert SECRET not in log
