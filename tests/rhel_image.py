"""The RHEL / Alma / Rocky disk as their installer lays it out, made by Debian's own tools:
a GPT disk with an xfs ``/boot`` partition (``vmlinuz-<v>``, ``initramfs-<v>.img``) and an
LVM PV holding the ``rhel`` volume group, whose ``root`` LV is xfs (in two segments: a
``swap`` LV took the extents between, as ``lvextend`` after another ``lvcreate`` leaves
it). The root also carries ``/boot/vmlinuz-<v>`` so the same disk serves a plan that names
the LV (a layout without a separate /boot).

The xfs images come from tests/disk_images.py (mkfs.xfs, host loop mounts, cached); the
partition table from ``sgdisk`` on the host; the PV, VG and LVs from ``pvcreate``,
``vgcreate``, ``lvcreate`` and ``lvextend`` in the helper VM (tests/volume_vm.py: the host
has no device-mapper), cached by a hash of the recipe and of the xfs layouts' recipes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from publisher.run import run
from tests.disk_images import SIZES, Layout, image_for

MIB = 1 << 20
BOOT_MIB = SIZES["xfs"] // MIB  # mkfs.xfs's floor
PV_MIB = BOOT_MIB + 64
DISK_MIB = 1 + BOOT_MIB + PV_MIB + 1  # GPT, /boot, the PV, the backup GPT
ROOT_MIB = BOOT_MIB
#: Run in the helper VM: vda is the payload (GPT, /boot, and the root xfs raw in p2),
#: vdb the new disk. The GPT and /boot are copied (and the backup GPT), the PV made on
#: vdb2, the root LV made in two segments and filled from vda2.
RECIPE = f"""dd if=/dev/vda of=/dev/vdb bs=1M count={1 + BOOT_MIB} conv=fsync
dd if=/dev/vda of=/dev/vdb bs=1M skip={DISK_MIB - 1} seek={DISK_MIB - 1} conv=fsync
blockdev --rereadpt /dev/vdb
cat /proc/partitions
ls -l /dev/vdb1 /dev/vdb2
lvm pvcreate -ff -y /dev/vdb2
lvm vgcreate rhel /dev/vdb2
lvm lvcreate -y -Wn -Zn -L {ROOT_MIB // 2}M -n root rhel
lvm lvcreate -y -Wn -Zn -L 16M -n swap rhel
lvm lvextend -y -L {ROOT_MIB}M rhel/root
dd if=/dev/vda2 of=/dev/mapper/rhel-root bs=1M count={ROOT_MIB} conv=fsync
lvm vgchange -an rhel
"""


def layouts(v: str, kernel: bytes, initrd: bytes) -> tuple[Layout, Layout]:
    boot = Layout("rhel-lvm-boot", "xfs",
                  {f"vmlinuz-{v}": kernel, f"initramfs-{v}.img": initrd}, label="boot")  # fmt: skip
    root = Layout("rhel-lvm-root", "xfs", {
        f"boot/vmlinuz-{v}": kernel, f"boot/initramfs-{v}.img": initrd,
        "etc/redhat-release": b"Red Hat Enterprise Linux release 9.4 (Plow)\n",
    }, label="root")  # fmt: skip
    return boot, root


def rhel_disk(work: Path, v: str, kernel: bytes, initrd: bytes) -> Path:
    """The RHEL disk (one image), from the cache when its recipe was made before."""
    from tests.volume_vm import make_volumes

    boot, root = layouts(v, kernel, initrd)
    (boot_image,) = image_for(boot)
    (root_image,) = image_for(root)
    work.mkdir(parents=True, exist_ok=True)
    payload = work / "payload.raw"
    with open(payload, "wb") as f:
        f.truncate(DISK_MIB * MIB)
    pv_start = (1 + BOOT_MIB) * 2048
    table = ["sgdisk", "-n", f"1:2048:+{BOOT_MIB}M", "-t", "1:8300", "-c", "1:boot",
             "-n", f"2:{pv_start}:+{PV_MIB}M", "-t", "2:8e00", "-c", "2:lvm"]  # fmt: skip
    run([*table, payload])
    with open(payload, "r+b") as out:
        for image, at in ((boot_image, 1), (root_image, 1 + BOOT_MIB)):
            out.seek(at * MIB)
            with open(image, "rb") as src:
                shutil.copyfileobj(src, out, MIB)
    key = f"rhel-lvm {DISK_MIB} MiB {' '.join(table)}: {boot.digest()} {root.digest()}"
    (disk,) = make_volumes(RECIPE, payload, (DISK_MIB,), work / "disk", payload_key=key)
    payload.unlink()
    return disk
