"""The guest agent's payload for the initramfs: a Python runtime for the target arch,
the agent, its pure-Python dependencies, and the small scripts around them.

The runtime comes from Debian bookworm packages for that arch (python3.11-minimal,
libpython3.11-{minimal,stdlib} and the few shared libraries its extension modules need),
through the per-user ``DebCache``. What a boot never uses is cut (tests, idle, tkinter,
docs, locales, gconv, curses/sqlite/dbm), and the stdlib is compiled on the host to
sourceless ``.pyc`` (``compileall -b``, unchecked-hash: bytecode is arch-independent),
since Debian ships none and compiling under TCG doubled Python's start-up. Every boot
decompresses all of this, so ``measure`` reports the size.

The boot-media build calls ``guest_agent_entries`` when the recipe says
``init = "guest-agent"`` (as ``initramfs_entries``) and adds busybox, the kernel modules
(names in ``/etc/cloudboot/modules``, order in ``modules.dep``) and /etc/cosign.pub.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from publisher.media import cpio
from publisher.media.debs import DebCache
from publisher.run import run

#: The guest interpreter's version: bytecode compiled here must carry its magic number.
GUEST_PYTHON = "3.11"
RUNTIME_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "python3-regex",
    "libc6", "libssl3", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1",
)  # fmt: skip
#: Pure-Python wheels from PyPI, pinned as constraints.txt pins them (ext4's own wheel is
#: the py3-none-any one: the venv's is a compiled x86_64 build).
PYPI_PACKAGES = ("ext4==1.4.1", "cachetools==7.1.1", "crcmod==1.7", "typing_extensions==4.15.0")
#: Host site-packages copied as they are (pure Python).
VENV_PACKAGES = ("hcl2", "lark")
STDLIB_DROP = (
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "distutils", "unittest", "sqlite3", "curses", "dbm", "venv", "config-3.11-",
    "turtle.py", "pydoc.py", "doctest.py", "mailbox.py", "imaplib.py", "nntplib.py",
    "ftplib.py", "smtplib.py", "xmlrpc", "wsgiref", "msilib", "asyncio", "multiprocessing",
    "concurrent", "email/mime", "http/server.py", "sqlite3", "lib2to3", "_pydecimal.py",
)  # fmt: skip
DYNLOAD_DROP = ("_sqlite3", "_curses", "readline", "_dbm", "_gdbm", "_tkinter", "_crypt",
                "_codecs_", "_multibytecodec", "nis", "_test", "xxlimited", "audioop")  # fmt: skip
TREE_DROP = ("usr/share", "usr/lib/locale", "usr/bin/pydoc", "sbin", "usr/sbin", "etc")
#: Shared libraries nothing in the runtime links or loads (checked with readelf -d over
#: python3.11 and lib-dynload), by name prefix, in lib/<triplet> and usr/lib/<triplet>:
#: every byte here is decompressed on every boot.
LIB_DROP = ("libBrokenLocale", "libanl", "libc_malloc_debug", "libmemusage", "libmvec",
            "libnsl", "libnss_compat", "libnss_hesiod", "libpcprofile", "libthread_db",
            "libexpatw", "gconv", "ossl-modules", "engines-3")  # fmt: skip

INIT_SCRIPT = """#!/bin/busybox sh
# cloud-boot-init (Python): the agent is PID 1 through exec, so it never returns here.
# No `busybox --install`: its ~400 links cost time on every boot and the agent calls
# /bin/busybox by path (the debug shell installs them when it starts).
export PATH=/usr/bin:/bin PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1
export LD_LIBRARY_PATH=/lib/{triplet}:/usr/lib/{triplet}
exec /usr/bin/python3.11 -S -B /usr/lib/cloudboot/cloud-boot-init.py
"""
RESET_SCRIPT = """#!/bin/sh
export PYTHONHOME=/usr LD_LIBRARY_PATH=/lib/{triplet}:/usr/lib/{triplet}
exec /usr/bin/python3.11 -S -B /usr/lib/cloudboot/cloudboot-reset.py "$@"
"""
#: Entry scripts: the dataclass code cache goes in before anything defines a dataclass.
_ENTRY = (
    "import sys\nfrom guest.agent import precompiled\n"
    "precompiled.install(sys.path[0] + '/' + precompiled.CACHE_NAME)\n"
)
#: The agent's: modules and DHCP start before the (slow to import) agent is imported.
AGENT_MAIN = _ENTRY + (
    "from guest.agent.sysguest import GuestSystem\nsystem = GuestSystem()\nsystem.start_early()\n"
    "from guest.agent.main import main\nmain(system)\n"
)
RESET_MAIN = _ENTRY + "from guest.agent.reset import main\nsys.exit(main())\n"
#: Every guest module a boot may import (lazily or not): their dataclasses are cached.
GUEST_MODULES = (
    *(f"guest.agent.{m}" for m in ("main", "sysguest", "fetch", "diskread", "menu", "metadata",
                                   "template", "lease", "reset", "httpclient", "machine",
                                   "trust", "floor")),
    "guest.contract.cosign", "guest.contract.plan",
)  # fmt: skip
#: busybox udhcpc calls this with $1 = deconfig|bound|renew and the lease in variables;
#: besides configuring the interface it leaves the lease in LEASE_FILE for the agent
#: (cmdline templates, resolv.conf). Applets by path: there are no applet links.
UDHCPC_SCRIPT = """#!/bin/busybox sh
bb=/bin/busybox
case "$1" in
deconfig) $bb ip addr flush dev "$interface"; $bb ip link set "$interface" up ;;
bound|renew)
  $bb ip addr flush dev "$interface"
  $bb ip addr add "$ip/${mask:-24}" dev "$interface"
  for r in $router; do $bb ip route add default via "$r" dev "$interface"; break; done
  : > /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  $bb mkdir -p /run/cloud-boot
  for k in interface ip subnet mask router dns hostname domain broadcast; do
    eval "v=\\$$k"; echo "$k=$v"
  done > /run/cloud-boot/lease.env ;;
esac
exit 0
"""


@dataclass(frozen=True)
class PackReport:
    files: int
    uncompressed: int
    gzip: int
    zstd: int


def _triplet(arch: Arch) -> str:
    return {Arch.X86_64: "x86_64-linux-gnu", Arch.AARCH64: "aarch64-linux-gnu"}[arch]


def _prune(root: Path, arch: Arch) -> None:
    for rel in TREE_DROP:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for libdir in (root / "lib" / _triplet(arch), root / "usr/lib" / _triplet(arch)):
        for path in libdir.glob("*"):
            if path.name.startswith(LIB_DROP):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    stdlib = root / "usr/lib/python3.11"
    for name in STDLIB_DROP:
        for path in stdlib.glob(name + "*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in (stdlib / "lib-dynload").glob("*.so"):
        if path.name.startswith(DYNLOAD_DROP):
            path.unlink()
    for path in list(root.rglob("__pycache__")):
        shutil.rmtree(path)
    for path in (root / "usr/bin").glob("*"):
        if path.name not in ("python3.11",):
            path.unlink()


def _compile_sourceless(tree: Path, keep_sources: Iterable[str] = ()) -> None:
    """Bytecode for every module, compiled here once (unchecked-hash: never re-validated).

    Legacy-location ``.pyc`` next to each ``.py`` (``-b``), then the ``.py`` is dropped.
    Kept sources (the agent's own, for readable tracebacks) get their ``.pyc`` moved into
    ``__pycache__`` instead: next to a ``.py`` a legacy ``.pyc`` is ignored, and the guest
    would compile the agent from source on every boot (~1 s under TCG).
    """
    run([sys.executable, "-m", "compileall", "-q", "-b", "-j", "0",
         "--invalidation-mode", "unchecked-hash", "-d", "/", tree])  # fmt: skip
    keep = tuple(keep_sources)
    tag = f"cpython-{GUEST_PYTHON.replace('.', '')}"
    for source in tree.rglob("*.py"):
        compiled = source.with_suffix(".pyc")
        if not compiled.exists():
            continue
        if source.relative_to(tree).as_posix().startswith(keep):
            cache = source.parent / "__pycache__"
            cache.mkdir(exist_ok=True)
            compiled.replace(cache / f"{source.stem}.{tag}.pyc")
        else:
            source.unlink()


def _pypi_sources(dest: Path, cache: Path) -> None:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PYPI_PACKAGES
               if not list(wheels.glob(p.split("==")[0].replace("-", "_") + "-*"))]  # fmt: skip
    sdists = [p for p in missing if p.startswith("crcmod")]
    wheels_any = [p for p in missing if not p.startswith("crcmod")]
    if wheels_any:  # py3-none-any only: never the host's compiled build of the same version
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
             ":all:", "--platform", "any", "--python-version", "3.11", "-d", wheels,
             *wheels_any])  # fmt: skip
    if sdists:  # crcmod has no wheel; its pure-Python fallback is in the sdist
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
             ":all:", "-d", wheels, *sdists])  # fmt: skip
    for archive in sorted(wheels.iterdir()):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.unpack_archive(archive, tmp, "zip" if archive.suffix == ".whl" else None)
            base = Path(tmp)
            if archive.suffix != ".whl":  # an sdist: sources under <name>-<ver>/
                base = next(base.iterdir())
                base = base / "python3" if (base / "python3").is_dir() else base
            for item in base.iterdir():
                if item.name.endswith((".dist-info", ".egg-info")) or item.name in (
                    "setup.py",
                    "test",
                    "docs",
                    "PKG-INFO",
                    "setup.cfg",
                    "LICENSE",
                    "README",
                ):
                    continue
                if item.suffix in ("", ".py") or item.is_dir():
                    target = dest / item.name
                    if item.is_dir():
                        shutil.copytree(
                            item,
                            target,
                            dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.so", "*.c", "test*"),
                        )
                    else:
                        shutil.copy2(item, target)


def build_tree(
    dest: Path, arch: Arch, *, debs: DebCache | None = None, repo: Path | None = None
) -> Path:
    """Assemble the agent's part of the initramfs as a directory tree at ``dest``."""
    debs = debs or DebCache()
    repo = repo or Path(__file__).resolve().parents[2]
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        pkg = debs.package(name, arch)
        shutil.copytree(
            pkg.root,
            dest,
            dirs_exist_ok=True,
            symlinks=True,
            ignore=shutil.ignore_patterns(".control"),
        )
    # python3-regex installs under dist-packages; our -S interpreter only sees the app dir
    app = dest / "usr/lib/cloudboot"
    app.mkdir(parents=True, exist_ok=True)
    dist = dest / "usr/lib/python3/dist-packages"
    if dist.is_dir():
        for item in dist.iterdir():
            if item.name.startswith("regex") and item.is_dir() and "-info" not in item.name:
                shutil.copytree(item, app / item.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("test_*"))  # fmt: skip
        shutil.rmtree(dest / "usr/lib/python3")
    _prune(dest, arch)
    venv_site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for name in VENV_PACKAGES:
        shutil.copytree(
            venv_site / "site-packages" / name,
            app / name,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyi", "py.typed"),
        )
    _pypi_sources(app, debs.root.parent)
    shutil.copytree(
        repo / "guest",
        app / "guest",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (app / "cloud-boot-init.py").write_text(AGENT_MAIN)
    (app / "cloudboot-reset.py").write_text(RESET_MAIN)
    _compile_sourceless(dest / "usr/lib/python3.11")
    _compile_sourceless(app, keep_sources=("guest/", "cloud-boot-init.py", "cloudboot-reset.py"))
    _prepare_hcl2_parser(app, repo)
    _record_dataclass_code(app)
    triplet = _triplet(arch)
    _write(dest / "init", INIT_SCRIPT.format(triplet=triplet), 0o755)
    _write(dest / "usr/bin/cloudboot-reset", RESET_SCRIPT.format(triplet=triplet), 0o755)
    _write(dest / "etc/cloud-boot/udhcpc.script", UDHCPC_SCRIPT, 0o755)
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        (dest / "usr/lib/ssl").mkdir(parents=True, exist_ok=True)
        shutil.copy(ca, dest / "usr/lib/ssl/cert.pem")
    return dest


GUEST_APP_DIR = "/usr/lib/cloudboot"
#: Lark keys its parser cache on the options, and hcl2 passes the cache file's absolute
#: path as one of them: the cache must be built as if the package lived at its guest path.
#: Host-side runs import the packed pure-Python code, but the packed ``regex`` extension
#: is built for the guest's arch: the host's own ``regex`` is imported first instead.
_HOST_PRELUDE = """
import sys
sys.path.insert(0, {host_site!r})
import regex
sys.path[0] = {app!r}
"""
_WARM = """
import lark.lark as L
real_open = L.FS.open
L.FS.open = lambda name, mode="r", **kw: real_open(name.replace({guest!r}, {app!r}, 1), mode, **kw)
import pathlib, hcl2.parser as p
p.PARSER_FILE = pathlib.Path({guest!r} + "/hcl2/.lark_cache.bin")
p.parser()
"""


#: Runs after ``_WARM`` (same interpreter): ``p.parser()`` is the cache-loaded parser.
_SNAPSHOT = """
from guest.contract.plan import tables
original = p.parser()
texts = {samples!r} + [pathlib.Path(f).read_text() for f in {plans!r}]
snapshot = tables.load(tables.dump(p.parser(), texts[0]))
differ = tables.same_results(original, snapshot, texts)
if differ:
    raise SystemExit(f"the parser snapshot parses {{len(differ)}} text(s) differently")
pathlib.Path({out!r}).write_bytes(tables.dump(snapshot, texts[0]))
"""
#: Texts both parsers must agree on besides the repo's plans (which an installed package
#: may not have): a plan with the common constructs, then a bad token, an unterminated
#: string, a missing value and a stray character.
_SAMPLE_PLANS = [
    'locals { c = "ttyS0" }\ndefault_target = "a"\ntarget "a" {\n'
    '  kernel = "r/k:1"\n  cmdline = ["console=${local.c}", arch == "arm64" ? "x" : "y"]\n}\n',
    'x = "a" "b"\n', 'x = "open\n', "x =\n", 'target "a" { kernel = ? }\n',
]  # fmt: skip


def _prepare_hcl2_parser(app: Path, repo: Path) -> None:
    """One host interpreter builds hcl2's LALR tables (lark's cache: the guest would spend
    ~30 s on them under TCG) and the ready parser as one pickle (``guest.contract.plan.tables``),
    checked against hcl2's own on sample texts and the repo's plans (~0.4 s per boot)."""
    from guest.contract.plan.tables import SNAPSHOT_PATH

    plans = sorted(str(p) for p in (repo / "plans").glob("*.hcl"))
    out = app / SNAPSHOT_PATH.name
    warm = _WARM.format(app=str(app), guest=GUEST_APP_DIR)
    code = _SNAPSHOT.format(samples=_SAMPLE_PLANS, plans=plans, out=str(out))
    _run_packed(app, warm + code)
    for made in (app / "hcl2/.lark_cache.bin", out):
        if not made.is_file():
            raise RuntimeError(f"{made.name} was not written")


_RECORD = """
from guest.agent import precompiled
data = precompiled.record({modules!r})
with open({out!r}, "wb") as out:
    out.write(data)
"""


def _record_dataclass_code(app: Path) -> None:
    """Compile the guest's dataclass methods here (see ``guest.agent.precompiled``): a fresh
    interpreter of the guest's minor version imports the packed modules and records."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != GUEST_PYTHON:
        return  # code objects of another minor version would not load; the guest compiles
    out = app / "dataclass-code.marshal"
    _run_packed(app, _RECORD.format(modules=GUEST_MODULES, out=str(out)))


def _run_packed(app: Path, code: str) -> None:
    """Run ``code`` in a fresh host interpreter that imports from the packed app dir."""
    import importlib.util

    spec = importlib.util.find_spec("regex")  # the host's, for its location
    if spec is None or spec.origin is None:
        raise RuntimeError("the host Python has no regex module (python-hcl2 needs it)")
    host_site = str(Path(spec.origin).parent.parent)
    prelude = _HOST_PRELUDE.format(host_site=host_site, app=str(app))
    run([sys.executable, "-S", "-B", "-c", prelude + code])


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def guest_agent_entries(arch: Arch, *, debs: DebCache | None = None) -> list[cpio.Entry]:
    """cpio entries of the agent payload (the hook ``init = "guest-agent"`` calls)."""
    with tempfile.TemporaryDirectory(prefix="cloudboot-guest-") as tmp:
        tree = build_tree(Path(tmp) / "root", arch, debs=debs)
        return cpio.tree(tree)


def initramfs_entries(arch: Arch) -> list[cpio.Entry]:
    """The name ``publisher.media.initramfs`` calls for ``init = "guest-agent"``."""
    return guest_agent_entries(arch)


def measure(entries: list[cpio.Entry]) -> PackReport:
    raw = cpio.newc(entries)
    return PackReport(
        files=len(entries),
        uncompressed=len(raw),
        gzip=len(cpio.compress(raw, cpio.Compression.GZIP)),
        zstd=len(cpio.compress(raw, cpio.Compression.ZSTD)),
    )
