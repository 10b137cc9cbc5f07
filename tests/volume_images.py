"""LUKS test images made the way a user makes them, with cryptsetup and no device-mapper
(docs/wire-formats.md §10): a plain ext4 image grown by the header room, then
``cryptsetup reencrypt --encrypt`` (LUKS2) or that followed by ``cryptsetup convert
--type luks1`` (LUKS1; ``luksFormat`` alone would leave the data to be written through
dm-crypt). KDF costs are forced low so that an unlock under TCG takes seconds.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

from publisher.run import run

HEADER_ROOM = 16 << 20
#: md RAID1 over vdb and vdc holding the payload (tests/volume_vm.py).
MD_RAID1 = """mdadm --create /dev/md0 --run --metadata=1.2 --level=1 --raid-devices=2 \\
  --assume-clean --homehost=cloudboot --name=root /dev/vdb /dev/vdc
dd if=/dev/vda of=/dev/md0 bs=1M conv=fsync
mdadm --stop /dev/md0
"""


#: A VG on vdb with one linear LV in two segments (created, then extended after a second
#: LV took the extents between), holding the payload.
LVM_LINEAR = """lvm pvcreate -ff -y /dev/vdb
lvm vgcreate vg0 /dev/vdb
lvm lvcreate -y -Wn -Zn -L 12M -n root vg0
lvm lvcreate -y -Wn -Zn -L 4M -n gap vg0
lvm lvextend -y -L 20M vg0/root
dd if=/dev/vda of=/dev/mapper/vg0-root bs=1M conv=fsync
lvm vgchange -an vg0
"""
#: The same for the QEMU lab's 64 MB target (tests/qemu_lab.py).
LVM_LAB = LVM_LINEAR.replace("12M", "40M").replace("20M", "68M")


class LogLines:
    """The agent console's ``log`` as a list (what the volume code reports)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def has_cryptsetup() -> bool:
    return shutil.which("cryptsetup") is not None


def make_luks(
    plain: Path, out: Path, passphrase: bytes, *, version: int = 2, sector_size: int = 4096
) -> Path:
    """``out``: ``plain`` encrypted in place of a copy; the passphrase goes in on stdin."""
    shutil.copyfile(plain, out)
    with open(out, "r+b") as f:
        f.truncate(plain.stat().st_size + HEADER_ROOM)
    kdf = (
        ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1",
         "--pbkdf-force-iterations", "4"]
        if version == 2
        else ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    )  # fmt: skip
    run(["cryptsetup", "reencrypt", "--batch-mode", "--encrypt", "--type", "luks2",
         "--sector-size", str(sector_size), "--reduce-device-size", f"{HEADER_ROOM}",
         *kdf, "--key-file", "-", str(out)], input=passphrase)  # fmt: skip
    if version == 1:
        run(["cryptsetup", "convert", "--batch-mode", "--type", "luks1", str(out)])
    return out


def disk_plan(device: str, passphrase: str | None = None, fs: str | None = None) -> bytes:
    secret = f'    luks-passphrase = "{passphrase}"\n' if passphrase else ""
    kind = f'    fs = "{fs}"\n' if fs else ""
    return (
        'default_target = "debian"\n'
        'target "debian" {\n  cmdline = "console=ttyS0 panic=-1"\n'
        f'  disk {{\n    device = "{device}"\n{secret}{kind}  }}\n}}\n'
    ).encode()


def tree_key(tree: Path) -> str:
    """The lab target's content (its files), standing for its image in the cache key."""
    digest = hashlib.sha256()
    for path in sorted(tree.rglob("*")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(str(path.readlink()).encode() if path.is_symlink() else
                      path.read_bytes() if path.is_file() else b"dir")  # fmt: skip
    return f"qemu_lab target.ext4 64M: {digest.hexdigest()}"


#: The small test filesystem's kernel: the same bytes every run (see ``small_volumes``).
SMALL_KERNEL = "boot/vmlinuz-6.1.0-13-amd64"


def small_volumes(
    base: Path, label: str, recipe: str, sizes_mib: tuple[int, ...]
) -> tuple[list[Path], bytes]:
    """A 16 MB ext4 (``label``) holding a 1 MiB kernel, put on volumes by ``recipe`` in
    the helper VM; the disks and the kernel's bytes. The kernel is derived from its
    name, so the recipe (not the image, whose ctimes differ) keys the cache."""
    from tests.volume_vm import make_volumes

    tree = base / "tree"
    (tree / "boot").mkdir(parents=True)
    kernel = random.Random(SMALL_KERNEL).randbytes(1 << 20)
    (tree / SMALL_KERNEL).write_bytes(kernel)
    payload = base / "plain.img"
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(tree), str(payload), "16M"]
    run(mkfs)
    key = f"{mkfs[:-3]} {SMALL_KERNEL}=Random({SMALL_KERNEL!r}).randbytes(1 MiB)"
    return make_volumes(recipe, payload, sizes_mib, base / "disks", payload_key=key), kernel
