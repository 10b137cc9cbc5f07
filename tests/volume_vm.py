"""Disk images that need md or device-mapper, made by Debian's own tools in a helper VM.

The host kernel has neither md nor device-mapper (docs/wire-formats.md §10), so
``mdadm --create`` and ``lvcreate`` run in a VM: the Debian cloud kernel (which has
both, as modules) booted straight from QEMU's ``-kernel`` under TCG, with an initramfs
of busybox, the host's ``mdadm``/``lvm`` and the shared libraries they link (``ldd``),
and the md/dm modules. A shell recipe runs there against raw disk images (``/dev/vdb``
on; ``/dev/vda`` is the payload, a plain filesystem image to copy onto the new volume).

The images are cached under ``~/.cache/cloudboot/volume-images`` by a hash of the
recipe, the payload's bytes, the tool versions and the kernel, so a second run (and CI
with a warm cache) skips the VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from guest.contract.arch import Arch
from publisher.media import cpio, kmods
from publisher.media.debs import DebCache, user_cache_dir
from publisher.run import run

DONE = "VOLUME-VM-DONE"
MODULES = ("virtio_pci", "virtio_blk", "md_mod", "raid1", "dm_mod")
TOOLS = ("/usr/sbin/mdadm", "/usr/sbin/lvm")
_INIT = """#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /run/lvm /etc/lvm /tmp
$bb mount -t proc proc /proc; $bb mount -t sysfs sys /sys; $bb mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko; do $bb insmod $m; done
export PATH=/bin:/usr/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
$bb sh -ex /recipe.sh && echo {done}
$bb sync
$bb poweroff -f
"""
_LVM_CONF = """devices { obtain_device_list_from_udev = 0 }
activation { udev_sync = 0 udev_rules = 0 verify_udev_operations = 1 }
global { use_lvmetad = 0 locking_type = 1 }
"""


def has_tools() -> bool:
    return all(os.access(t, os.X_OK) for t in TOOLS) and shutil.which("ldd") is not None


def _libraries(binaries: tuple[str, ...]) -> list[Path]:
    found: set[Path] = set()
    for binary in binaries:
        for line in run(["ldd", binary]).stdout.decode().splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                found.add(Path(path))
    return sorted(found)


def _initramfs(recipe: str, modules_dir: Path) -> bytes:
    debs = DebCache()
    busybox = debs.package("busybox-static", Arch.X86_64).root / "bin/busybox"
    entries = [cpio.directory(d) for d in ("/dev", "/proc", "/sys", "/bin", "/usr",
               "/usr/sbin", "/lib", "/lib64", "/lib/modules", "/lib/x86_64-linux-gnu",
               "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/etc", "/etc/lvm")]  # fmt: skip
    entries += [
        cpio.char_device("/dev/console", 5, 1),
        cpio.file("/bin/busybox", busybox.read_bytes(), 0o755),
        cpio.file("/init", _INIT.format(done=DONE).encode(), 0o755),
        cpio.file("/recipe.sh", recipe.encode(), 0o755),
        cpio.file("/etc/lvm/lvm.conf", _LVM_CONF.encode(), 0o644),
    ]
    for tool in TOOLS:
        entries.append(cpio.file(tool, Path(tool).read_bytes(), 0o755))
    for lib in _libraries(TOOLS):
        real = lib.resolve()
        entries.append(cpio.file(str(lib), real.read_bytes(), 0o755))
    available = kmods.index_modules(modules_dir)
    order = kmods.resolve(MODULES, available, kmods.builtin_modules(modules_dir))
    for number, name in enumerate(order):
        entries.append(cpio.file(f"/lib/modules/{number:02d}-{name}.ko",
                                 available[name].read_bytes(), 0o644))  # fmt: skip
    return cpio.compress(cpio.newc(entries), cpio.Compression.GZIP)


def _versions() -> str:
    mdadm = run([TOOLS[0], "--version"]).stderr.decode().strip()
    lvm = run([TOOLS[1], "version"]).stdout.decode().splitlines()[0].strip()
    return f"{mdadm}\n{lvm}"


def make_volumes(
    recipe: str, payload: Path, sizes_mib: tuple[int, ...], out: Path, payload_key: str = ""
) -> list[Path]:
    """Run ``recipe`` in the helper VM over new zeroed disks of ``sizes_mib`` (vdb, vdc,
    ...) with ``payload`` as vda; copies of the resulting disks land in ``out``.

    ``payload_key`` stands for the payload in the cache key when its bytes are not
    reproducible (``mkfs.ext4 -d`` copies the build tree's ctimes) but its recipe is."""
    kpkg = DebCache().kernel_package("linux-image-cloud-amd64", Arch.X86_64)
    key = hashlib.sha256()
    for part in (recipe, repr(sizes_mib), _versions(), kpkg.deb.name, _INIT, _LVM_CONF):
        key.update(part.encode() + b"\0")
    if payload_key:
        key.update(b"payload:" + payload_key.encode())
    else:
        with open(payload, "rb") as f:
            key.update(hashlib.file_digest(f, "sha256").digest())
    cached = user_cache_dir("volume-images") / key.hexdigest()[:32]
    names = [f"disk{i}.raw" for i in range(len(sizes_mib))]
    if not all((cached / n).is_file() for n in names):
        _run_vm(recipe, payload, sizes_mib, cached, names, kpkg.root)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name in names:
        shutil.copyfile(cached / name, out / name)
        made.append(out / name)
    return made


def _run_vm(
    recipe: str, payload: Path, sizes_mib: tuple[int, ...], cached: Path, names: list[str],
    kernel_root: Path,
) -> None:  # fmt: skip
    work = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    modules_dir = next((kernel_root / "lib/modules").iterdir())
    vmlinuz = next((kernel_root / "boot").glob("vmlinuz-*"))
    (work / "initrd.gz").write_bytes(_initramfs(recipe, modules_dir))
    drives = ["-drive", f"if=virtio,format=raw,readonly=on,file={payload}"]
    for name, size in zip(names, sizes_mib, strict=True):
        with open(work / name, "wb") as f:
            f.truncate(size << 20)
        drives += ["-drive", f"if=virtio,format=raw,file={work / name}"]
    serial = work / "serial.log"
    run(["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-machine", "q35",
         "-accel", "tcg", "-m", "512", "-display", "none", "-no-reboot",
         "-kernel", vmlinuz, "-initrd", work / "initrd.gz",
         "-append", "console=ttyS0 panic=-1 loglevel=4", *drives,
         "-serial", f"file:{serial}"], timeout=900)  # fmt: skip
    log = serial.read_text(errors="replace")
    if DONE not in log:
        raise RuntimeError(f"the volume helper VM failed; serial log tail:\n{log[-4000:]}")
    # published whole by one rename: a parallel test worker making the same image either
    # finds it complete or loses the rename to it, never reads a half-replaced one
    if not all((cached / n).is_file() for n in names):
        shutil.rmtree(cached, ignore_errors=True)  # absent, or torn by an older layout
        with contextlib.suppress(OSError):
            os.replace(work, cached)
    shutil.rmtree(work, ignore_errors=True)
