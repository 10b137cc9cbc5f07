"""The zfs kernel modules built for the guest's kernel, and the ``zpool`` the guest runs.

ZFS has no userland reader and the Debian cloud kernel has no zfs.ko (its licence keeps
it in ``contrib`` as source: ``zfs-dkms``). So the modules are compiled here, the way
DKMS would, but against the *guest's* kernel headers (``linux-headers-<uname>`` of the
kernel package the UKI is built from), not the host's running kernel: the sources and
headers are ``.deb``s unpacked into the deb cache, nothing is installed, and DKMS is not
involved (it builds for kernels installed on the host). See docs/disks.md "ZFS".

A build takes long (configure + make of ~260 files; see ZFS-NOTES.md for the numbers),
so it is cached under ``~/.cache/cloudboot/volume-images/zfs-<zfs>-<uname>-<key>`` by the
kernel package's version, zfs-dkms's version and the build recipe; a second run is a
directory lookup.

``guest_tree`` lays out what a guest image carries for ZFS (an ``initramfs.trees``
source): the modules in load order under ``/lib/cloudboot/zfs/`` and ``zpool`` with every
library it links, its own ``ld.so`` and ``libc`` included, under ``/opt/zfs`` (so it
never replaces the guest runtime's libraries). Run as ``python -m
publisher.media.zfsbuild DEST`` it builds (or finds) the modules and writes that tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from publisher.media import kmods
from publisher.media.debs import DebCache, Package, depends_names, user_cache_dir
from publisher.run import require_tool, run

KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: zfs-dkms's modules, dependencies first (the order ``insmod`` needs).
MODULE_ORDER = ("spl", "zavl", "znvpair", "zunicode", "zcommon", "icp", "zzstd", "zlua", "zfs")
#: The userland: ``zpool`` and the libraries Debian splits out of it.
USERLAND_PACKAGES = ("zfsutils-linux", "libzfs4linux", "libnvpair3linux", "libuutil3linux")
#: Part of the cache key: a change here rebuilds.
CONFIGURE = ("--prefix=/usr", "--with-config=kernel")
#: Where the guest finds them (guest/agent/disks/zfs.py reads the same paths).
GUEST_MODULES = "/lib/cloudboot/zfs"
GUEST_PREFIX = "/opt/zfs"
LIBDIR = "lib/x86_64-linux-gnu"
INFO = "build.json"


class ZfsBuildError(Exception):
    pass


@dataclass(frozen=True)
class ZfsBuild:
    """A finished build: the stripped modules in load order, and what they were built for."""

    root: Path
    uname: str
    kernel_version: str
    zfs_version: str

    @property
    def modules(self) -> tuple[Path, ...]:
        return tuple(self.root / f"{name}.ko" for name in MODULE_ORDER)


def _kernel(debs: DebCache) -> tuple[Package, str]:
    kpkg = debs.kernel_package(KERNEL_PACKAGE, Arch.X86_64)
    uname = next((kpkg.root / "lib/modules").iterdir()).name
    return kpkg, uname


def build(debs: DebCache | None = None, *, jobs: int = 2) -> ZfsBuild:
    """The cached build for the recipe's x86_64 kernel, compiling it first if missing."""
    debs = debs or DebCache()
    kpkg, uname = _kernel(debs)
    dkms = debs.package("zfs-dkms", Arch.X86_64)
    kver, zver = kpkg.control.get("Version", "?"), dkms.control.get("Version", "?")
    key = hashlib.sha256("\0".join((uname, kver, zver, *CONFIGURE, *MODULE_ORDER)).encode())
    upstream = zver.split("-")[0]
    cached = user_cache_dir("volume-images") / f"zfs-{upstream}-{uname}-{key.hexdigest()[:12]}"
    result = ZfsBuild(cached, uname, kver, zver)
    if not (cached / INFO).is_file():
        _compile(debs, dkms, uname, kver, upstream, result, jobs)
    return result


def _headers(debs: DebCache, uname: str, kver: str) -> list[Package]:
    """``linux-headers-<uname>`` and what it depends on (the common tree, kbuild)."""
    flavour = debs.package(f"linux-headers-{uname}", Arch.X86_64)
    if flavour.control.get("Version") != kver:
        raise ZfsBuildError(
            f"linux-headers-{uname} is {flavour.control.get('Version')} but the kernel "
            f"package is {kver}: both must come from the same Debian kernel upload"
        )
    deps = [d for d in depends_names(flavour.control.get("Depends", ""))
            if d.startswith(("linux-headers-", "linux-kbuild-"))]  # fmt: skip
    return [flavour, *(debs.package(d, Arch.X86_64) for d in deps)]


def _compile(
    debs: DebCache, dkms: Package, uname: str, kver: str, upstream: str, out: ZfsBuild,
    jobs: int,
) -> None:  # fmt: skip
    for tool in ("make", "gcc"):
        require_tool(tool, tool)
    work = out.root.with_name(f".{out.root.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    sysroot = work / "sysroot"
    try:
        for pkg in _headers(debs, uname, kver):
            shutil.copytree(pkg.root / "usr", sysroot / "usr", symlinks=True, dirs_exist_ok=True)
        obj = sysroot / f"usr/src/linux-headers-{uname}"
        # Debian's flavour Makefile includes the common tree by its installed path.
        makefile = obj / "Makefile"
        makefile.write_text(makefile.read_text().replace("/usr/src/", f"{sysroot}/usr/src/"))
        common = next(d for d in (sysroot / "usr/src").iterdir() if d.name.endswith("-common"))
        src = work / "src"
        shutil.copytree(dkms.root / f"usr/src/zfs-{upstream}", src, symlinks=True)
        nice = ["nice", "-n", "10"]
        run([*nice, "./configure", *CONFIGURE, f"--with-linux={common}",
             f"--with-linux-obj={obj}"], cwd=src)  # fmt: skip
        run([*nice, "make", f"-j{jobs}"], cwd=src)
        staged = work / "out"
        staged.mkdir()
        for name in MODULE_ORDER:
            found = list((src / "module").rglob(f"{name}.ko"))
            if len(found) != 1:
                raise ZfsBuildError(f"the zfs build made {len(found)} {name}.ko (expected 1)")
            run(["strip", "--strip-debug", "-o", staged / f"{name}.ko", found[0]])
        info = {"uname": uname, "kernel": kver, "zfs": dkms.control.get("Version")}
        (staged / INFO).write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(out.root, ignore_errors=True)
        os.replace(staged, out.root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kernel_dependencies(zfs: ZfsBuild, debs: DebCache | None = None) -> list[Path]:
    """The kernel package's own modules the zfs modules need, dependencies first."""
    kpkg, uname = _kernel(debs or DebCache())
    modules_dir = kpkg.root / "lib/modules" / uname
    ours = {kmods.module_key(n) for n in MODULE_ORDER}
    wanted = sorted({d for ko in zfs.modules for d in kmods.module_depends(ko.read_bytes())
                     if kmods.module_key(d) not in ours})  # fmt: skip
    available = kmods.index_modules(modules_dir)
    order = kmods.resolve(tuple(wanted), available, kmods.builtin_modules(modules_dir))
    return [available[m] for m in order]


def userland(debs: DebCache | None = None, tools: tuple[str, ...] = ("zpool",)) -> dict[str, Path]:
    """``tools`` and every library they link (path in the tree -> file to copy): the zfs
    libraries from their packages, the rest (libc, ld.so, libtirpc, ...) as the host's
    ``ldd`` resolves them (Debian bookworm, the guest runtime's release)."""
    debs = debs or DebCache()
    roots = [debs.package(p, Arch.X86_64).root for p in USERLAND_PACKAGES]
    libpath = ":".join(str(r / LIBDIR) for r in roots)
    files: dict[str, Path] = {}
    for tool in tools:
        binary = roots[0] / "sbin" / tool
        files[f"{GUEST_PREFIX}/bin/{tool}"] = binary
        ldd = run([require_tool("ldd", "libc-bin"), binary], env={"LD_LIBRARY_PATH": libpath})
        for line in ldd.stdout.decode().splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                files[f"{GUEST_PREFIX}/lib/{Path(path).name}"] = Path(path).resolve()
    return files


def guest_tree(dest: Path, zfs: ZfsBuild | None = None) -> Path:
    """Write the guest's ZFS pieces under ``dest`` (an ``initramfs.trees`` source)."""
    debs = DebCache()
    zfs = zfs or build(debs)
    shutil.rmtree(dest, ignore_errors=True)
    mods = dest / GUEST_MODULES.lstrip("/")
    mods.mkdir(parents=True)
    for number, ko in enumerate([*kernel_dependencies(zfs, debs), *zfs.modules]):
        shutil.copyfile(ko, mods / f"{number:02d}-{ko.name.removesuffix('.xz')}")
    for target, src in userland(debs).items():
        path = dest / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        path.chmod(0o755)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m publisher.media.zfsbuild DEST", file=sys.stderr)
        return 2
    zfs = build()
    tree = guest_tree(Path(argv[0]), zfs)
    print(f"zfs {zfs.zfs_version} for {zfs.uname}: modules {zfs.root}, guest tree {tree}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
