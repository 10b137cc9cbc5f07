"""The guest agent's payload for the initramfs: a Python runtime for the target arch,
the agent (stdlib only: no PyPI package goes into the guest), and the small scripts around
them.

The runtime comes from Debian bookworm packages for that arch (python3.11-minimal,
libpython3.11-{minimal,stdlib} and the few shared libraries its extension modules need),
through the per-user ``DebCache``. What a boot never uses is cut (tests, idle, tkinter,
docs, locales, gconv, curses/sqlite/dbm), and the stdlib is compiled on the host to
sourceless ``.pyc`` (``compileall -b``, unchecked-hash: bytecode is arch-independent),
since Debian ships none and compiling under TCG doubled Python's start-up. Every boot
decompresses all of this, so ``measure`` reports the size.

The boot-media build resolves ``pack_inputs`` (which it also fingerprints) and calls
``guest_agent_entries`` with them when the recipe says ``init = "guest-agent"``, and adds
busybox, the kernel modules (names in ``/etc/cloudboot/modules``, order in
``modules.dep``) and /etc/cosign.pub.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher.media import cpio, guestwarm
from publisher.media.debs import CONTROL_FILE, DebCache, Package
from publisher.media.guestwarm import GUEST_APP_DIR, PACKER_ENV, record_dataclass_code
from publisher.run import run

#: The guest interpreter's version: bytecode compiled here must carry its magic number.
GUEST_PYTHON = "3.11"
RUNTIME_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
    "libssl3", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1",
    "libargon2-1",  # LUKS2 key slots (guest/agent/volumes/native.py)
    # kexec(8) for cloudboot.exit=kexec without segment hashing (guest/agent/kexec.py);
    # it links libxenctrl, which links the small libxen* below.
    "kexec-tools", "libxenmisc4.17", "libxentoollog1", "libxencall1", "libxenevtchn1",
    "libxengnttab1", "libxenforeignmemory1", "libxendevicemodel1", "libxentoolcore1",
)  # fmt: skip
#: Binaries kept from trees TREE_DROP removes: where the package puts them -> where the
#: agent runs them (guest.agent.kexec.KEXEC_TOOL).
KEEP_BINARIES = {"sbin/kexec": "usr/lib/cloudboot/kexec"}
STDLIB_DROP = (
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "distutils", "unittest", "sqlite3", "curses", "dbm", "venv", "config-3.11-",
    "turtle.py", "pydoc.py", "doctest.py", "mailbox.py", "imaplib.py", "nntplib.py",
    "ftplib.py", "smtplib.py", "xmlrpc", "wsgiref", "msilib", "asyncio", "multiprocessing",
    "concurrent", "email/mime", "http/server.py", "sqlite3", "lib2to3", "_pydecimal.py",
)  # fmt: skip
DYNLOAD_DROP = ("_sqlite3", "_curses", "readline", "_dbm", "_gdbm", "_tkinter", "_crypt",
                "_codecs_", "_multibytecodec", "nis", "_test", "xxlimited", "audioop")  # fmt: skip
TREE_DROP = ("usr/share", "usr/lib/locale", "usr/bin/pydoc", "sbin", "usr/sbin", "etc",
             "usr/lib/systemd", "usr/lib/xen-4.17")  # fmt: skip
#: Shared libraries nothing in the runtime links or loads (checked with readelf -d over
#: python3.11 and lib-dynload), by name prefix, in lib/<triplet> and usr/lib/<triplet>:
#: every byte here is decompressed on every boot.
LIB_DROP = ("libBrokenLocale", "libanl", "libc_malloc_debug", "libmemusage", "libmvec",
            "libnsl", "libnss_compat", "libnss_hesiod", "libpcprofile", "libthread_db",
            "libexpatw", "gconv", "ossl-modules", "engines-3", "libxenlight", "libxlutil",
            "libxenguest", "libxenstat", "libxenvchan", "kexec-tools")  # fmt: skip

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
#: Entry scripts: the deferred stdlib modules and the dataclass code cache go in before
#: anything imports them or defines a dataclass (guest.agent.precompiled). The cyclic
#: garbage collector is off for the one pass a guest process makes: start-up allocates
#: tens of thousands of objects that all stay (modules, classes, functions), and
#: collecting them again and again cost ~12% of the agent's imports (host, guest
#: runtime, median of 40); the pass's own garbage is freed by reference counting.
#: ``main`` turns it back on when the pass ends without leaving the machine (FATAL).
_ENTRY = (
    "import gc\ngc.disable()\n"
    "import sys\nfrom guest.agent import precompiled\nprecompiled.defer()\n"
    "precompiled.install(sys.path[0] + '/' + precompiled.CACHE_NAME)\n"
)
#: The agent's: modules and DHCP start before the (slow to import) agent is imported.
AGENT_MAIN = _ENTRY + (
    "from guest.agent.sysguest import GuestSystem\nsystem = GuestSystem()\nsystem.start_early()\n"
    "from guest.agent.main import main\nmain(system)\n"
)
RESET_MAIN = _ENTRY + "from guest.agent.reset import main\nsys.exit(main())\n"
#: busybox udhcpc calls this with $1 = deconfig|bound|renew and the lease in variables;
#: besides configuring the interface it leaves the lease in LEASE_FILE for the agent
#: (cmdline templates, resolv.conf). Applets by path: there are no applet links.
#: Each applet is a process, ~10-20 ms under TCG, and DHCP is on the agent's path: an
#: address is flushed only when an earlier lease put one there, the link is raised only
#: when it is down (the agent raises it before udhcpc starts: sysguest._link_up), and the
#: lease's directory is made only when missing.
UDHCPC_SCRIPT = """#!/bin/busybox sh
bb=/bin/busybox
lease=/run/cloud-boot/lease.env
flush() { [ -e $lease ] && $bb ip addr flush dev "$interface"; }
case "$1" in
deconfig)
  flush
  f=0; read f 2>/dev/null < "/sys/class/net/$interface/flags"
  [ $(( f & 1 )) = 1 ] || $bb ip link set "$interface" up ;;
bound|renew)
  flush
  $bb ip addr add "$ip/${mask:-24}" dev "$interface"
  for r in $router; do $bb ip route add default via "$r" dev "$interface"; break; done
  : > /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  [ -d ${lease%/*} ] || $bb mkdir -p ${lease%/*}
  for k in interface ip subnet mask router dns hostname domain broadcast; do
    eval "v=\\$$k"; echo "$k=$v"
  done > $lease ;;
esac
exit 0
"""


@dataclass(frozen=True)
class PackReport:
    files: int
    uncompressed: int
    gzip: int
    zstd: int
    lz4: int  # the repository recipe's choice (docs/wire-formats.md §4.2)


def _triplet(arch: Arch) -> str:
    return {Arch.X86_64: "x86_64-linux-gnu", Arch.AARCH64: "aarch64-linux-gnu"}[arch]


def _prune(root: Path, arch: Arch) -> None:
    for source, kept in KEEP_BINARIES.items():
        (root / kept).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / source, root / kept)
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


def _compile_sourceless(tree: Path, guest_dir: str, keep_sources: Iterable[str] = ()) -> None:
    """Bytecode for every module, compiled here once (unchecked-hash: never re-validated).

    Legacy-location ``.pyc`` next to each ``.py`` (``-b``), then the ``.py`` is dropped.
    Kept sources (the agent's own, for readable tracebacks) get their ``.pyc`` moved into
    ``__pycache__`` instead: next to a ``.py`` a legacy ``.pyc`` is ignored, and the guest
    would compile the agent from source on every boot (~1 s under TCG). ``guest_dir`` is
    where ``tree`` lives in the guest: the ``co_filename`` tracebacks show, and never the
    packer's temporary directory (which would make every build's bytes differ).
    """
    run([sys.executable, "-m", "compileall", "-q", "-b", "-j", "0",
         "--invalidation-mode", "unchecked-hash", "-d", guest_dir, tree],
        env=PACKER_ENV)  # fmt: skip
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


#: Never packed from a source tree (and so not an input either).
_IGNORE_RE = re.compile(
    "|".join(fnmatch.translate(p) for p in ("__pycache__", "*.pyi", "py.typed"))
)


@dataclass(frozen=True)
class PackInputs:
    """Everything the packer reads for one arch, resolved to files on disk.

    ``build_tree`` packs exactly these, and the boot-media build fingerprints
    ``files()``: an edit in any of them (the agent's code, a package, the host Python)
    makes the next ``cloudboot build`` rebuild.
    """

    arch: Arch
    runtime: tuple[Package, ...]  # the Python runtime's packages (apt or a base)
    guest: Path  # the ``guest`` package packed as the agent
    ca_bundle: Path | None

    def files(self) -> list[str]:
        """Every file read: the .debs (their extracted trees derive from them), the packed
        source tree, the CA bundle, this packer and the host
        interpreter that compiles the bytecode (``guestwarm`` runs the rest)."""
        trees = tree_files(self.guest)
        ca = [self.ca_bundle] if self.ca_bundle else []
        code = [Path(__file__).resolve(), Path(guestwarm.__file__).resolve()]
        one = [*(p.deb for p in self.runtime), *ca, *code,
               Path(sys.executable).resolve()]  # fmt: skip
        return [*map(os.fspath, one), *trees]


def _ignored(directory: str, names: list[str]) -> set[str]:
    """What a copy of a source tree leaves out (``copytree``'s ``ignore``)."""
    return {n for n in names if _IGNORE_RE.match(n)}


def tree_files(root: Path) -> list[str]:
    """The files under ``root`` a copy of it takes, sorted: a plain ``scandir`` walk (no
    ``Path`` objects), since every no-op build lists a few hundred files."""
    found, pending = [], [os.fspath(root)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if _IGNORE_RE.match(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    found.append(entry.path)
    return sorted(found)


def pack_inputs(
    arch: Arch, *, debs: DebCache | None = None, repo: Path | None = None, offline: bool = False
) -> PackInputs:
    """The packer's inputs for ``arch`` (downloading missing packages unless ``offline``);
    ``repo`` holds the ``guest`` package (default: this installation)."""
    debs = debs or DebCache()
    repo = repo or Path(__file__).resolve().parents[2]
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    return PackInputs(
        arch=arch,
        runtime=tuple(debs.package(n, arch, offline=offline) for n in RUNTIME_PACKAGES),
        guest=repo / "guest",
        ca_bundle=ca if ca.exists() else None,
    )


class GuestPythonError(CloudbootError):
    pass


def check_host_python(version: tuple[int, int], executable: str) -> None:
    """Refuse a host interpreter that is not the guest's minor version.

    The stdlib and the agent are byte-compiled here, and bytecode carries its
    interpreter's magic number: a 3.12 host would give the 3.11 guest .pyc files it
    rejects, and PID 1 would die at its first import.
    """
    host = f"{version[0]}.{version[1]}"
    if host != GUEST_PYTHON:
        raise GuestPythonError(
            f"the guest runs Python {GUEST_PYTHON} but cloudboot runs on Python {host} "
            f"({executable}): bytecode compiled by {host} does not load in {GUEST_PYTHON}. "
            f"Run cloudboot from a Python {GUEST_PYTHON} venv (./bootstrap picks python"
            f"{GUEST_PYTHON}; macOS: brew install python@{GUEST_PYTHON})"
        )


def build_tree(
    dest: Path, arch: Arch, *, debs: DebCache | None = None, repo: Path | None = None,
    inputs: PackInputs | None = None,
) -> Path:  # fmt: skip
    """Assemble the agent's part of the initramfs as a directory tree at ``dest`` from
    ``inputs`` (default: ``pack_inputs(arch, debs=debs, repo=repo)``)."""
    check_host_python((sys.version_info[0], sys.version_info[1]), sys.executable)
    inputs = inputs or pack_inputs(arch, debs=debs, repo=repo)
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in inputs.runtime:
        shutil.copytree(pkg.root, dest, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(CONTROL_FILE))  # fmt: skip
    app = dest / "usr/lib/cloudboot"
    app.mkdir(parents=True, exist_ok=True)
    _prune(dest, arch)
    shutil.copytree(inputs.guest, app / inputs.guest.name, dirs_exist_ok=True, ignore=_ignored)
    (app / "cloud-boot-init.py").write_text(AGENT_MAIN)
    (app / "cloudboot-reset.py").write_text(RESET_MAIN)
    _compile_sourceless(dest / "usr/lib/python3.11", "/usr/lib/python3.11")
    keep = ("guest/", "cloud-boot-init.py", "cloudboot-reset.py")
    _compile_sourceless(app, GUEST_APP_DIR, keep_sources=keep)
    record_dataclass_code(app)  # same interpreter version: check_host_python above
    triplet = _triplet(arch)
    _write(dest / "init", INIT_SCRIPT.format(triplet=triplet), 0o755)
    _write(dest / "usr/bin/cloudboot-reset", RESET_SCRIPT.format(triplet=triplet), 0o755)
    _write(dest / "etc/cloud-boot/udhcpc.script", UDHCPC_SCRIPT, 0o755)
    if inputs.ca_bundle is not None:
        (dest / "usr/lib/ssl").mkdir(parents=True, exist_ok=True)
        shutil.copy(inputs.ca_bundle, dest / "usr/lib/ssl/cert.pem")
    return dest


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def guest_agent_entries(inputs: PackInputs) -> list[cpio.Entry]:
    """cpio entries of the agent payload (what ``init = "guest-agent"`` adds)."""
    with tempfile.TemporaryDirectory(prefix="cloudboot-guest-") as tmp:
        tree = build_tree(Path(tmp) / "root", inputs.arch, inputs=inputs)
        return cpio.tree(tree, normal_modes=True)


def measure(entries: list[cpio.Entry]) -> PackReport:
    raw = cpio.newc(entries)
    return PackReport(
        files=len(entries),
        uncompressed=len(raw),
        gzip=len(cpio.compress(raw, cpio.Compression.GZIP)),
        zstd=len(cpio.compress(raw, cpio.Compression.ZSTD)),
        lz4=len(cpio.compress(raw, cpio.Compression.LZ4)),
    )
