"""A per-user cache of Debian packages: ``apt-get download`` once, extract once, reuse offline.

Packages are fetched into ``$XDG_CACHE_HOME/cloudboot/debs`` (default ``~/.cache``) and
unpacked with ``dpkg-deb -x`` into a directory named after the .deb, next to a copy of
its control fields. A rebuild finds both there and needs no network. Meta packages
(``linux-image-cloud-amd64``) are followed to the package they depend on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import locked
from publisher.run import require_tool, run

CONTROL_FILE = ".control"


class DebError(CloudbootError):
    pass


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/cloudboot/<name>`` (default ``~/.cache``): every per-user cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudboot" / name


def default_cache_dir() -> Path:
    return user_cache_dir("debs")


def parse_control(text: str) -> dict[str, str]:
    """RFC822-style control fields (continuation lines joined)."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last:
            fields[last] += "\n" + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            fields[last] = value.strip()
    return fields


def depends_names(depends: str) -> list[str]:
    """Package names of a Depends field, first alternative of each, without versions."""
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


@dataclass(frozen=True)
class Package:
    """An unpacked package: its .deb, the extracted tree, its control fields."""

    deb: Path
    root: Path
    control: dict[str, str]

    @property
    def name(self) -> str:
        return self.control.get("Package", self.deb.name.split("_")[0])


class DebCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()
        self._listing: tuple[int, list[str]] = (-1, [])

    def _names(self) -> list[str]:
        """The cache directory's entries, listed again only when its mtime moved: every
        no-op build asks for ~15 packages."""
        try:
            stamp = os.stat(self.root).st_mtime_ns
            if stamp != self._listing[0]:
                self._listing = (stamp, os.listdir(self.root))
        except FileNotFoundError:
            return []
        return self._listing[1]

    def cached_deb(self, name: str, arch: Arch) -> Path | None:
        """The newest cached .deb of ``name`` for ``arch`` (or arch ``all``), if any."""
        names = self._names()
        prefix, ends = f"{name}_", (f"_{arch.debian}.deb", "_all.deb")
        found = [  # what the glob f"{name}_*_{suffix}.deb" would match
            n for n in names if n.startswith(prefix)
            for end in ends if n.endswith(end) and len(n) >= len(prefix + end)
        ]  # fmt: skip
        return self.root / max(found) if found else None

    def deb(self, name: str, arch: Arch, *, offline: bool = False) -> Path:
        """The cached .deb of ``name``, downloaded first unless ``offline``."""
        deb = self.cached_deb(name, arch)
        if deb is not None:
            return deb
        if offline:
            raise DebError(f"Debian package {name} ({arch.debian}) is not in {self.root}")
        return self.download(name, arch)

    def download(self, name: str, arch: Arch) -> Path:
        """``apt-get download`` into the cache, one process at a time (builds running side
        by side, e.g. parallel tests, share the cache), each .deb renamed in once whole:
        a reader that does not take the lock never sees a half-written one."""
        with locked(self.root / ".download.lock"):
            self._listing = (-1, [])
            return self.cached_deb(name, arch) or self._download(name, arch)

    def _download(self, name: str, arch: Arch) -> Path:
        apt = require_tool("apt-get", "apt")
        spec = name if arch is Arch.host() else f"{name}:{arch.debian}"
        try:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=self.root) as tmp:
                run([apt, "download", "-q", spec], cwd=Path(tmp))
                for fetched in Path(tmp).glob("*.deb"):
                    os.replace(fetched, self.root / fetched.name)
        except CloudbootError as exc:
            hint = ""
            if arch is not Arch.host():
                hint = (f" (for {arch.debian} packages run: dpkg --add-architecture "
                        f"{arch.debian} && apt-get update)")  # fmt: skip
            raise DebError(f"cannot download Debian package {spec}{hint}: {exc}") from None
        deb = self.cached_deb(name, arch)
        if deb is None:
            raise DebError(f"apt-get download {spec} left no .deb in {self.root}")
        return deb

    def unpack(self, deb: Path) -> Package:
        """Extract ``deb`` once (into a temp dir renamed into place) and return it."""
        target = self.root / "x" / deb.name.removesuffix(".deb")
        control = target / CONTROL_FILE
        if not control.is_file():
            dpkg = require_tool("dpkg-deb", "dpkg")
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                run([dpkg, "-x", deb, tmp])
                (tmp / CONTROL_FILE).write_bytes(run([dpkg, "-f", deb]).stdout)
                # a tree is renamed into place whole: if another process (a parallel build)
                # got there first, its tree stays and this one goes
                with contextlib.suppress(OSError):
                    os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(tmp)
        return Package(deb, target, parse_control(control.read_text()))

    def package(self, name: str, arch: Arch, *, offline: bool = False) -> Package:
        return self.unpack(self.deb(name, arch, offline=offline))

    def kernel_package(self, name: str, arch: Arch, *, offline: bool = False) -> Package:
        """The package holding ``boot/vmlinuz-*``: ``name`` or the image a meta package names."""
        pkg = self.package(name, arch, offline=offline)
        for _ in range(3):
            if any((pkg.root / "boot").glob("vmlinuz-*")):
                return pkg
            deps = [d for d in depends_names(pkg.control.get("Depends", ""))
                    if d.startswith("linux-image-")]  # fmt: skip
            if not deps:
                break
            pkg = self.package(deps[0], arch, offline=offline)
        raise DebError(f"Debian package {name} ({arch.debian}) holds no /boot/vmlinuz-*")
