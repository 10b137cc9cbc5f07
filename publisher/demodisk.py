"""The demo "chained distro" disk: an ext4 filesystem holding a Debian kernel and a tiny
initrd that announces which plan target booted it (on the serial console, or on vfkit's
virtio console hvc0 once its module is loaded).

It stands in for a real distro root (say a Debian trixie raw image) in `cloudboot up` and in the
end-to-end tests: the guest agent reads ``/boot/vmlinuz-*`` and its paired initrd from it in
userland, stages them, and the firmware boots them. The initrd prints
``CLOUDBOOT-TARGET-UP target=<cloudboot.demo> ...`` (the plan's cmdline names the target)
and then idles, so the VM keeps running the target until the next restart.

Like a real distro it powers off when the VM's power button is pressed (ACPI, which is how
the VM backends ask a guest to stop), so a restart does not sit out the stop timeout
before forcing the VM off. That needs the kernel's power-button and evdev drivers, which
Debian ships as modules: the initrd carries them and loads them after the marker.

Where it comes from: with a base artifact (``[base]`` in the recipe) the disk image is a
layer of the base, so neither Debian tools nor mkfs.ext4 are needed (a Mac has neither
on PATH: Homebrew's e2fsprogs is keg-only); otherwise it is made here with mkfs.ext4,
found on PATH or in Homebrew's keg directories. UUID, hash seed and file times are fixed,
but mkfs -d copies each file's ctime from the build tree, so two images still differ in
their inode ctimes (``cloudboot push base`` therefore keeps the first image it made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher.media import cpio, kmods
from publisher.media.base import BasePackages
from publisher.media.debs import DebCache
from publisher.run import run

#: Homebrew installs e2fsprogs keg-only: its mkfs.ext4 is here, not on PATH.
KEG_SBIN = (Path("/opt/homebrew/opt/e2fsprogs/sbin"), Path("/usr/local/opt/e2fsprogs/sbin"))

#: Filesystem label the demo plan's targets point at (``device = "LABEL=cbtarget"``).
DEMO_LABEL = "cbtarget"
TARGET_MARKER = "CLOUDBOOT-TARGET-UP"

#: Drivers the initrd loads, in load order (any that are built in are skipped): vfkit's
#: console (a virtio console, hvc0, on PCI; docs/wire-formats.md §6), then what the power-off
#: needs.
POWER_BUTTON_MODULES = ("virtio_pci", "virtio_console", "evdev", "button")

_INIT = """#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
target=unknown
for word in $($bb cat /proc/cmdline); do
  case "$word" in cloudboot.demo=*) target="${word#cloudboot.demo=}" ;; esac
done
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for ko in /lib/modules/*.ko; do [ -f "$ko" ] && $bb insmod "$ko"; done
# console=hvc0 (vfkit) exists only now that virtio_console is loaded: reopen the console.
# Wait for it only when the VM has a virtio console (device id 3): under QEMU the plan's
# console=hvc0 names nothing, and waiting for it cost every QEMU target boot 2 s.
case " $($bb cat /proc/cmdline) " in *" console=hvc0 "*)
  if $bb grep -qx 0x0003 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/hvc0 ] && break; $bb sleep 0.2; done
  fi
  [ -e /dev/hvc0 ] && exec </dev/console >/dev/console 2>&1 ;;
esac
echo "MARKER target=$target cmdline=$($bb cat /proc/cmdline)"
# power off on the power button: one reader per power-button input device (ACPI's
# "Power Button"; gpio-keys, Virtualization.framework's power key on arm64)
for event in /sys/class/input/event*; do
  name="$($bb cat "$event/device/name" 2>/dev/null)"
  [ "$name" = "Power Button" ] || [ "$name" = gpio-keys ] || continue
  ( $bb head -c 1 "/dev/input/${event##*/}" >/dev/null && echo "power button: power off" &&
    $bb poweroff -f ) &
done
while true; do $bb sleep 3600; done
"""


@dataclass(frozen=True)
class DemoDisk:
    path: Path
    kernel_release: str
    created: bool


def target_initrd(busybox: bytes, modules: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The gzip'd newc initrd whose /init prints the target marker and idles.

    ``modules`` (name, .ko bytes) are loaded in the given order after the marker; without
    the power-button ones the target simply ignores the power button.
    """
    init = _INIT.replace("MARKER", TARGET_MARKER).encode()
    entries = [
        cpio.directory("/dev"),
        cpio.char_device("/dev/console", 5, 1),
        cpio.directory("/proc"),
        cpio.directory("/sys"),
        cpio.file("/bin/busybox", busybox, 0o755),
        cpio.file("/init", init, 0o755),
        cpio.directory("/lib"),
        cpio.directory("/lib/modules"),
    ]
    for number, (name, ko) in enumerate(modules):  # the glob in /init keeps this order
        entries.append(cpio.file(f"/lib/modules/{number:02d}-{name}.ko", ko, 0o644))
    return cpio.compress(cpio.newc(entries), cpio.Compression.GZIP)


def power_button_modules(modules_dir: Path) -> list[tuple[str, bytes]]:
    """The power-off drivers this kernel has as modules (with dependencies), in load order."""
    available = kmods.index_modules(modules_dir)
    builtin = kmods.builtin_modules(modules_dir)
    wanted = [m for m in POWER_BUTTON_MODULES if m in available or m in builtin]
    return [(n, available[n].read_bytes()) for n in kmods.resolve(wanted, available, builtin)]


def find_mkfs_ext4() -> str | None:
    """mkfs.ext4 on PATH, else in Homebrew's e2fsprogs keg; None when neither has it."""
    found = shutil.which("mkfs.ext4")
    if found:
        return found
    for sbin in KEG_SBIN:
        if os.access(sbin / "mkfs.ext4", os.X_OK):
            return str(sbin / "mkfs.ext4")
    return None


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
    A base artifact's own image is used as it is.
    """
    cache = cache or DebCache()
    shipped = cache.demo_image(arch) if isinstance(cache, BasePackages) else None
    if shipped is not None:
        if not path.exists() or force:
            path.parent.mkdir(parents=True, exist_ok=True)
            shipped.write(path)
            return DemoDisk(path, shipped.uname, created=True)
        return DemoDisk(path, shipped.uname, created=False)
    kernel_pkg = cache.kernel_package(f"linux-image-cloud-{arch.debian}", arch, offline=offline)
    vmlinuz = max((kernel_pkg.root / "boot").glob("vmlinuz-*"))
    release = vmlinuz.name.removeprefix("vmlinuz-")
    if path.exists() and not force:
        return DemoDisk(path, release, created=False)
    busybox = cache.package("busybox-static", arch, offline=offline).root / "bin" / "busybox"
    mkfs = find_mkfs_ext4()
    if mkfs is None:
        raise CloudbootError(
            "mkfs.ext4 is needed for the demo target disk and is neither on PATH nor in "
            "Homebrew's keg (apt-get install e2fsprogs / brew install e2fsprogs); or point "
            "the recipe's [base] at a base artifact, which ships the disk"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".demo-disk-") as tmp:
        tree = Path(tmp) / "tree"
        boot = tree / "boot"
        boot.mkdir(parents=True)
        shutil.copyfile(vmlinuz, boot / vmlinuz.name)
        modules = power_button_modules(kernel_pkg.root / "lib" / "modules" / release)
        initrd = target_initrd(busybox.read_bytes(), modules)
        (boot / f"initrd.img-{release}").write_bytes(initrd)
        # Distros keep these convenience links; the guest's path walk must cope with them.
        (tree / "vmlinuz").symlink_to(f"boot/{vmlinuz.name}")
        (tree / "initrd.img").symlink_to(f"boot/initrd.img-{release}")
        image = Path(tmp) / "disk.raw"
        for item in [tree, *tree.rglob("*")]:  # mkfs -d copies the times of the tree
            os.utime(item, (0, 0), follow_symlinks=False)
        fixed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cloudboot-demo-disk:{release}"))
        run([mkfs, "-q", "-F", "-L", DEMO_LABEL, "-U", fixed, "-E", f"hash_seed={fixed}",
             "-d", tree, image, f"{size_mib}M"], env={"E2FSPROGS_FAKE_TIME": "1"})  # fmt: skip
        os.replace(image, path)
    return DemoDisk(path, release, created=True)
