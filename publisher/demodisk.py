"""The demo "chained distro" disk: an ext4 filesystem holding a Debian kernel and a tiny
initrd that announces which plan target booted it.

It stands in for a real distro root (the seed's trixie.raw) in `cloudboot up` and in the
end-to-end tests: the guest agent reads ``/boot/vmlinuz-*`` and its paired initrd from it in
userland, stages them, and the firmware boots them. The initrd prints
``CLOUDBOOT-TARGET-UP target=<cloudboot.demo> ...`` (the plan's cmdline names the target)
and then idles, so the VM keeps running the target until the next restart.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guest.arch import Arch
from publisher.media import cpio
from publisher.media.debs import DebCache
from publisher.run import require_tool, run

#: Filesystem label the demo plan's targets point at (``device = "LABEL=cbtarget"``).
DEMO_LABEL = "cbtarget"
TARGET_MARKER = "CLOUDBOOT-TARGET-UP"

_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
target=unknown
for word in $(/bin/busybox cat /proc/cmdline); do
  case "$word" in cloudboot.demo=*) target="${word#cloudboot.demo=}" ;; esac
done
echo "MARKER target=$target cmdline=$(/bin/busybox cat /proc/cmdline)"
while true; do /bin/busybox sleep 3600; done
"""


@dataclass(frozen=True)
class DemoDisk:
    path: Path
    kernel_release: str
    created: bool


def target_initrd(busybox: bytes) -> bytes:
    """The gzip'd newc initrd whose /init prints the target marker and idles."""
    init = _INIT.replace("MARKER", TARGET_MARKER).encode()
    entries = [
        cpio.directory("/dev"),
        cpio.char_device("/dev/console", 5, 1),
        cpio.directory("/proc"),
        cpio.file("/bin/busybox", busybox, 0o755),
        cpio.file("/init", init, 0o755),
    ]
    return cpio.compress(cpio.newc(entries), cpio.Compression.GZIP)


def ensure_demo_disk(
    path: Path,
    arch: Arch,
    *,
    cache: DebCache | None = None,
    size_mib: int = 96,
    offline: bool = False,
    force: bool = False,
) -> DemoDisk:
    """Create the demo target disk unless it already exists (then it is left untouched).

    Built in a temp file next to ``path`` and renamed, so a VM never sees half an image.
    """
    cache = cache or DebCache()
    kernel_pkg = cache.kernel_package(f"linux-image-cloud-{arch.debian}", arch, offline=offline)
    vmlinuz = max((kernel_pkg.root / "boot").glob("vmlinuz-*"))
    release = vmlinuz.name.removeprefix("vmlinuz-")
    if path.exists() and not force:
        return DemoDisk(path, release, created=False)
    busybox = cache.package("busybox-static", arch, offline=offline).root / "bin" / "busybox"
    mkfs = require_tool("mkfs.ext4", "e2fsprogs")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".demo-disk-") as tmp:
        tree = Path(tmp) / "tree"
        boot = tree / "boot"
        boot.mkdir(parents=True)
        shutil.copyfile(vmlinuz, boot / vmlinuz.name)
        (boot / f"initrd.img-{release}").write_bytes(target_initrd(busybox.read_bytes()))
        # Distros keep these convenience links; the guest's path walk must cope with them.
        (tree / "vmlinuz").symlink_to(f"boot/{vmlinuz.name}")
        (tree / "initrd.img").symlink_to(f"boot/initrd.img-{release}")
        image = Path(tmp) / "disk.raw"
        run([mkfs, "-q", "-F", "-L", DEMO_LABEL, "-d", tree, image, f"{size_mib}M"])
        os.replace(image, path)
    return DemoDisk(path, release, created=True)
