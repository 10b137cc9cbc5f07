"""A Proxmox-style ZFS pool made by OpenZFS itself, in the helper VM (tests/volume_vm.py).

The host kernel has no zfs, so the modules built for the Debian cloud kernel
(publisher/media/zfsbuild.py) are loaded in the helper VM, where Debian's ``zpool`` and
``zfs`` make the layout the Proxmox installer makes: a GPT disk (BIOS boot, ESP, ZFS
partition, by sgdisk on the host), pool ``rpool`` on its third partition (ashift 12, lz4),
``rpool/ROOT`` and the root dataset ``rpool/ROOT/pve-1`` with ``/boot`` inside it, set as
the pool's ``bootfs``. The payload (vda) is a tar of the root's files, unpacked into the
dataset; the pool is exported at the end, as a clean shutdown would leave it... except
that a Proxmox host does not export its root pool, which is why the guest imports with
``-f`` (guest/agent/disks/zfs.py).

Images are cached like the md/LVM ones (recipe, payload, tools, kernel, plus the zfs
build's directory name, which carries zfs and kernel versions).
"""

from __future__ import annotations

from pathlib import Path

from publisher.media import zfsbuild
from publisher.run import run
from tests.volume_vm import VmExtras, make_volumes

DATASET = "rpool/ROOT/pve-1"
#: The Proxmox installer's disk: BIOS boot, ESP, and the pool on the third partition.
PROXMOX_GPT = ("-n", "1:34:2047", "-t", "1:EF02", "-n", "2:2048:+32M", "-t", "2:EF00",
               "-n", "3:0:0", "-t", "3:BF01")  # fmt: skip
DISK_MIB = 128
_Z = f"{zfsbuild.GUEST_PREFIX}/lib/ld-linux-x86-64.so.2 --library-path {zfsbuild.GUEST_PREFIX}/lib"
PROXMOX_POOL = f"""zpool() {{ {_Z} {zfsbuild.GUEST_PREFIX}/bin/zpool "$@"; }}
zfs() {{ {_Z} {zfsbuild.GUEST_PREFIX}/bin/zfs "$@"; }}
export ZFS_MODULE_LOADING=no
mkdir -p /mnt /etc
zpool create -f -o ashift=12 -O compression=lz4 -O mountpoint=none -R /mnt rpool /dev/vdb3
zfs create -o mountpoint=none rpool/ROOT
zfs create -o mountpoint=/ {DATASET}
zpool set bootfs={DATASET} rpool
tar -xf /dev/vda -C /mnt
sync
zfs list -o name,mountpoint,compression
zpool export rpool
"""


def make_pool(tree: Path, work: Path, payload_key: str) -> Path:
    """One disk holding ``rpool`` with ``tree``'s files in ``rpool/ROOT/pve-1``."""
    zfs = zfsbuild.build()
    work.mkdir(parents=True, exist_ok=True)
    payload = work / "payload.tar"
    run(["tar", "--format=ustar", "-cf", payload, "-C", tree, "."])
    gpt = work / "gpt.raw"
    with open(gpt, "wb") as f:
        f.truncate(DISK_MIB << 20)
    run(["sgdisk", "-a", "1", *PROXMOX_GPT, gpt])
    extras = VmExtras(
        files=tuple(zfsbuild.userland(tools=("zpool", "zfs")).items()),
        modules=(*zfsbuild.kernel_dependencies(zfs), *zfs.modules),
        templates=(gpt,),
        key=f"{zfs.root.name} sgdisk {PROXMOX_GPT}",
    )
    (disk,) = make_volumes(PROXMOX_POOL, payload, (DISK_MIB,), work / "disks", payload_key, extras)
    return disk
