"""``cloudboot kernel build``: an own kernel built out of tree, cached by a hash of its inputs.

A kernel build takes about an hour on two cores, so it must never run twice for the
same inputs, and a rebuild must notice every input that changed. The key hashes what
decides the output: the .config bytes, the source tree's identity (git HEAD plus the
status, size and mtime of every dirty or untracked file; outside git, every file's path,
size and mtime), the arch, the make variables (ARCH, CROSS_COMPILE and any extras) and
the cloudboot version, so a change in how we drive make invalidates old entries. ``-j``
is not an input: it changes how fast, not what.

make runs with ``O=<cache>/<key>.partial/obj`` (the source tree stays clean) and installs
modules into ``<cache>/<key>.partial/staging``. Only a finished build gets its
``result.json`` and is renamed to ``<cache>/<key>``; a failed or interrupted make leaves
no entry a later run could mistake for a kernel. make's output goes to
``<cache>/logs/<key>.log``, which a failure names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import structlog

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import locked
from publisher.media.debs import user_cache_dir
from publisher.run import CommandError, require_tool, run, spawn

log = structlog.get_logger(__name__)

#: Kbuild's ARCH= and the image target (and where it lands under O=) per arch.
KBUILD_ARCH = {Arch.X86_64: "x86_64", Arch.AARCH64: "arm64"}
IMAGE_TARGET = {
    Arch.X86_64: ("bzImage", "arch/x86/boot/bzImage"),
    Arch.AARCH64: ("Image", "arch/arm64/boot/Image"),
}
#: Debian's cross toolchains (gcc-x86-64-linux-gnu, gcc-aarch64-linux-gnu).
CROSS_PREFIX = {Arch.X86_64: "x86_64-linux-gnu-", Arch.AARCH64: "aarch64-linux-gnu-"}
RESULT_FILE = "result.json"
#: Variables we set ourselves per step; a user value would break the layout.
_RESERVED = frozenset({"O", "INSTALL_MOD_PATH"})
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class KernelBuildError(CloudbootError):
    pass


def cloudboot_version() -> str:
    try:
        return version("cloudboot")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def make_variables(
    arch: Arch, cross_compile: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """ARCH and CROSS_COMPILE for ``arch`` (a cross prefix only off the host arch) + extras."""
    if cross_compile is None:
        cross_compile = "" if arch is Arch.host() else CROSS_PREFIX[arch]
    variables = {"ARCH": KBUILD_ARCH[arch], "CROSS_COMPILE": cross_compile}
    for name, value in (extra or {}).items():
        if not _VAR_NAME.match(name) or name in _RESERVED:
            raise KernelBuildError(
                f"make variable {name!r} cannot be set "
                f"({'reserved' if name in _RESERVED else 'not a name'})"
            )
        variables[name] = value
    return variables


@dataclass(frozen=True)
class KernelBuildSpec:
    """What to build: a source tree, a config, an arch and the make variables."""

    src: Path
    arch: Arch
    config: Path
    variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        src: Path,
        arch: Arch,
        config: Path,
        cross_compile: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> KernelBuildSpec:
        return cls(
            src.resolve(), arch, config.resolve(), make_variables(arch, cross_compile, extra)
        )


def build_key(
    config: bytes,
    identity: Mapping[str, object],
    arch: Arch,
    variables: Mapping[str, str],
    cloudboot: str,
) -> str:
    """The cache key: sha256 over every input that can change the built kernel."""
    doc = {
        "config": hashlib.sha256(config).hexdigest(),
        "source": identity,
        "arch": arch.value,
        "make": dict(sorted(variables.items())),
        "cloudboot": cloudboot,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _stat_line(root: Path, rel: str) -> bytes:
    try:
        st = (root / rel).lstat()
    except OSError:
        return f"{rel}\0gone\n".encode()
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()


def tree_digest(src: Path) -> str:
    """Paths, sizes and mtimes of every file under ``src`` (``.git`` skipped), hashed."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        base = Path(top).relative_to(src)
        for name in sorted(files):
            digest.update(_stat_line(src, (base / name).as_posix()))
    return digest.hexdigest()


def git_status_paths(porcelain_z: bytes) -> list[str]:
    """Paths named by ``git status --porcelain=v1 -z`` (rename sources included)."""
    paths = []
    for item in porcelain_z.decode(errors="surrogateescape").split("\0"):
        if len(item) > 3 and item[2] == " ":
            paths.append(item[3:])
        elif item:  # the original path that follows a rename entry
            paths.append(item)
    return paths


def source_identity(src: Path) -> dict[str, str]:
    """What the source tree is: git HEAD + dirty files, or a hash of all file metadata.

    Status alone cannot tell two different edits of the same file apart, so each dirty
    path also contributes its size and mtime.
    """
    git = shutil.which("git")
    if (src / ".git").exists() and git:
        try:
            head = run([git, "-C", src, "rev-parse", "HEAD"]).stdout.decode().strip()
            status = run(
                [git, "-C", src, "status", "--porcelain=v1", "-z", "--untracked-files=all"]
            ).stdout
        except CommandError as exc:
            log.warning(
                "git cannot describe the source tree; hashing file metadata instead",
                src=str(src),
                error=str(exc),
            )
        else:
            dirty = hashlib.sha256(status)
            for rel in git_status_paths(status):
                dirty.update(_stat_line(src, rel))
            return {"git": head, "dirty": dirty.hexdigest()}
    return {"files": tree_digest(src)}


@dataclass(frozen=True)
class KernelBuild:
    """A finished build in the cache."""

    key: str
    root: Path
    image: Path
    modules_dir: Path | None
    uname: str
    cached: bool

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "cached": self.cached,
            "image": str(self.image),
            "modules_dir": str(self.modules_dir) if self.modules_dir else None,
            "uname": self.uname,
            "dir": str(self.root),
        }


def make_argv(make: str, spec: KernelBuildSpec, obj: Path, *args: str) -> list[str]:
    """One make call: out of tree in ``obj``, with the spec's variables, then ``args``."""
    variables = [f"{k}={v}" for k, v in sorted(spec.variables.items())]
    return [make, "-C", str(spec.src), f"O={obj}", *variables, *args]


class KernelBuildCache:
    """``$XDG_CACHE_HOME/cloudboot/kernel-build``: one directory per finished build."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or user_cache_dir("kernel-build")

    def key(self, spec: KernelBuildSpec) -> str:
        try:
            config = spec.config.read_bytes()
        except OSError as exc:
            raise KernelBuildError(
                f"cannot read kernel config: {exc.strerror}", where=str(spec.config)
            ) from None
        if not (spec.src / "Makefile").is_file():
            raise KernelBuildError("not a kernel source tree (no Makefile)", where=str(spec.src))
        return build_key(
            config, source_identity(spec.src), spec.arch, spec.variables, cloudboot_version()
        )

    def log_path(self, key: str) -> Path:
        return self.root / "logs" / f"{key}.log"

    def lookup(self, spec: KernelBuildSpec, key: str | None = None) -> KernelBuild | None:
        """The finished build for ``spec``'s current inputs, if there is one."""
        key = key or self.key(spec)
        entry = self.root / key
        try:
            doc = json.loads((entry / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None
        modules = doc.get("modules_dir")
        return KernelBuild(
            key,
            entry,
            entry / doc["image"],
            entry / modules if modules else None,
            str(doc.get("uname", "")),
            cached=True,
        )

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """One build per key at a time; a second process waits and then finds it cached."""
        with locked(self.root / "locks" / key):
            yield

    def build(self, spec: KernelBuildSpec, jobs: int | None = None) -> KernelBuild:
        """The cached build for these inputs, or run make now and cache the result."""
        key = self.key(spec)
        found = self.lookup(spec, key)
        if found is not None:
            return found
        with self._locked(key):
            found = self.lookup(spec, key)
            if found is not None:
                return found
            return self._build(spec, key, jobs or os.cpu_count() or 1)

    def _build(self, spec: KernelBuildSpec, key: str, jobs: int) -> KernelBuild:
        make = require_tool("make", "make")
        entry, partial = self.root / key, self.root / f"{key}.partial"
        obj, staging = partial / "obj", partial / "staging"
        logfile = self.log_path(key)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        logfile.write_bytes(b"")
        shutil.rmtree(partial, ignore_errors=True)
        obj.mkdir(parents=True)
        target, image_rel = IMAGE_TARGET[spec.arch]
        log.info(
            "building kernel",
            src=str(spec.src),
            arch=spec.arch.value,
            key=key[:16],
            log=str(logfile),
        )
        try:
            shutil.copyfile(spec.config, obj / ".config")
            self._make(make_argv(make, spec, obj, "olddefconfig"), logfile)
            modular = "CONFIG_MODULES=y" in (obj / ".config").read_text(errors="replace")
            goals = [target, "modules"] if modular else [target]
            self._make(make_argv(make, spec, obj, f"-j{jobs}", *goals), logfile)
            if modular:
                self._make(
                    make_argv(make, spec, obj, f"INSTALL_MOD_PATH={staging}", "modules_install"),
                    logfile,
                )
            uname = run(make_argv(make, spec, obj, "-s", "kernelrelease")).stdout.decode().strip()
            if not (obj / image_rel).is_file():
                raise KernelBuildError(
                    f"make {target} succeeded but left no {image_rel}", where=str(obj)
                )
            modules_rel = f"staging/lib/modules/{uname}"
            doc = {
                "image": f"obj/{image_rel}",
                "modules_dir": modules_rel if (partial / modules_rel).is_dir() else None,
                "uname": uname,
                "src": str(spec.src),
                "arch": spec.arch.value,
                "config": str(spec.config),
                "make": dict(spec.variables),
                "cloudboot": cloudboot_version(),
            }
            (partial / RESULT_FILE).write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(partial, entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info("kernel built", key=key[:16], uname=uname, dir=str(entry))
        built = self.lookup(spec, key)
        assert built is not None  # just written
        return KernelBuild(
            built.key, built.root, built.image, built.modules_dir, built.uname, cached=False
        )

    @staticmethod
    def _make(argv: Sequence[str], logfile: Path) -> None:
        """Run one make step with its output appended to ``logfile``; fail naming the log."""
        with open(logfile, "ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
        with spawn(argv, stdout=logfile, grace=10) as proc:
            status = proc.wait()
        if status != 0:
            tail = logfile.read_text(errors="replace").splitlines()[-5:]
            raise KernelBuildError(
                f"{CommandError(argv, status, chr(10).join(tail))}\n  full log: {logfile}; "
                "no cache entry was written"
            )
