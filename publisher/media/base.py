"""Boot inputs from a signed OCI "base" artifact instead of apt-get and dpkg-deb.

A Mac has neither ``apt-get`` nor ``dpkg-deb``, so a Linux host publishes every Debian-
derived input of ``cloudboot build`` and ``cloudboot up`` once (``cloudboot push base
REF``, publisher/media/basepack.py) and a recipe points at it, pinned by digest::

    [base]
    oci = "127.0.0.1:5000/cloudboot/base@sha256:..."

Then every ``{ deb = "..." }`` source of the recipe, the guest agent's Python runtime
(guestpack) and the demo target disk come from the artifact; the same works on Linux.
The pinned digest is checked for a cosign signature by the recipe's
``signing.cosign_public_key`` before anything in it is used, every blob is checked
against its digest, and blobs are cached by digest under ``~/.cache/cloudboot/oci``
(unpacked layers under ``~/.cache/cloudboot/base``), so a rebuild needs no network.

The artifact (media types; README "Boot inputs from an OCI base artifact"):

- an OCI image index (``application/vnd.oci.image.index.v1+json``), one entry per arch
  (``linux/amd64``, ``linux/arm64``), signed cosign-style at ``sha256-<hex>.sig``;
- per arch, an image manifest with ``artifactType`` ``application/vnd.cloud-boot.base.v1``
  and a config ``application/vnd.cloud-boot.base.config.v1+json``
  (``{"architecture","os","packages":{name: version}}``);
- layers: ``application/vnd.cloud-boot.base.package.v1.tar+gzip``, one per Debian
  package, its unpacked tree (plus ``.control``, its control fields), annotated
  ``dev.cloud-boot.base.package`` (name) and ``dev.cloud-boot.base.version``; the kernel
  package keeps only the modules a boot can ask for;
  (bases pushed before the guest went stdlib-only also carry a
  ``application/vnd.cloud-boot.base.wheels.v1.tar`` layer; it is ignored, never fetched);
  ``application/vnd.cloud-boot.base.demo-disk.v1.raw+gzip``, the demo target disk image
  (ext4), annotated ``dev.cloud-boot.kernel.uname``, so no mkfs.ext4 is needed either.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.arch import Arch
from guest.contract.oci import Descriptor, Manifest, parse_ref
from publisher.media.debs import (
    CONTROL_FILE,
    DebCache,
    DebError,
    Package,
    parse_control,
    user_cache_dir,
)
from publisher.media.ocicache import OciCache, OciKernelError, safe_member
from publisher.media.ocikernel import OciKernelPuller
from publisher.registry import RegistryClient

log = structlog.get_logger(__name__)

ARTIFACT_TYPE = "application/vnd.cloud-boot.base.v1"
MEDIA_BASE_CONFIG = "application/vnd.cloud-boot.base.config.v1+json"
MEDIA_PACKAGE = "application/vnd.cloud-boot.base.package.v1.tar+gzip"
MEDIA_DEMO_DISK = "application/vnd.cloud-boot.base.demo-disk.v1.raw+gzip"
ANNOTATION_PACKAGE = "dev.cloud-boot.base.package"
ANNOTATION_VERSION = "dev.cloud-boot.base.version"
ANNOTATION_UNAME = "dev.cloud-boot.kernel.uname"
#: A tar member bigger than this is refused (the largest real one, a kernel, is ~15 MiB).
MAX_MEMBER = 512 * 1024 * 1024


class BaseError(DebError):
    pass


def unpack_tar(data: bytes, target: Path, what: str) -> None:
    """Extract regular files, directories and symlinks of a (gzip'd) tar into ``target``.

    Only relative names without ``..``; nothing is written through a symlink; the result
    appears at once (a temp dir renamed into place), and a tree already at ``target``
    (the same layer, unpacked by another build meanwhile) is kept, never removed.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                rel = safe_member(member.name)
                if rel is None:
                    continue
                dest = tmp.joinpath(*rel.parts)
                parent = dest.parent
                if any(p.is_symlink() for p in (parent, *parent.parents) if tmp in p.parents):
                    raise BaseError(f"{what}: {member.name} would be written through a symlink")
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif member.issym():
                    parent.mkdir(parents=True, exist_ok=True)
                    dest.symlink_to(member.linkname)
                elif member.isfile():
                    if member.size > MAX_MEMBER:
                        raise BaseError(f"{what}: {member.name} is over {MAX_MEMBER} bytes")
                    parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    with src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out)
                    dest.chmod(member.mode & 0o755 | 0o644)
        try:
            os.rename(tmp, target)
        except OSError as exc:  # there already: another process unpacked the same
            # digest first and may be reading it; its files are these files, so it stays
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BaseError(f"{what}: not a usable tar layer: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class DemoImage:
    """The demo target disk as the base ships it: gzip'd raw ext4 and its kernel release."""

    gzipped: Path
    uname: str

    def write(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with gzip.open(self.gzipped) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class BasePackages(DebCache):
    """A ``DebCache`` whose packages come from a verified base artifact, never from apt.

    ``kernel_package`` (meta package -> image package) works unchanged: the base keeps
    the meta package's control fields as a layer of its own.
    """

    def __init__(
        self,
        ref: str,
        public_key: Path | None,
        registry: Callable[[], RegistryClient] = RegistryClient,
        *,
        offline: bool = False,
        cache: OciCache | None = None,
        what: str = "base.oci",
    ) -> None:
        self.ref = parse_ref(ref)
        if not self.ref.digest:
            raise BaseError(f"{what}: {ref} is not pinned by digest (use REF@sha256:...)")
        if public_key is None:
            raise BaseError(f"{what}: a base artifact is verified with signing.cosign_public_key")
        self.public_key = public_key
        self.what = f"{what}: {self.ref}"
        self.puller = OciKernelPuller(cache or OciCache(), registry, offline=offline)
        top = self.ref.digest.partition(":")[2]
        super().__init__(user_cache_dir("base") / top[:32] / "debs")
        self._manifests: dict[Arch, Manifest] = {}
        self._verified = False

    def manifest(self, arch: Arch) -> Manifest:
        """The arch's manifest, after the signature check of the pinned index (once)."""
        if arch in self._manifests:
            return self._manifests[arch]
        digest = self.ref.digest
        assert digest is not None
        try:
            if not self._verified:
                self.puller.check_signature(self.ref, digest, self.public_key, self.what)
                self._verified = True
            manifest, _ = self.puller.manifest_for(self.ref, digest, arch, self.what)
        except OciKernelError as exc:
            raise BaseError(f"refusing the base artifact: {exc.message}") from None
        if manifest.artifact_type != ARTIFACT_TYPE:
            raise BaseError(f"{self.what}: not a base artifact (artifactType "
                            f"{manifest.artifact_type!r}, expected {ARTIFACT_TYPE})")  # fmt: skip
        self._manifests[arch] = manifest
        return manifest

    def _layer(self, desc: Descriptor, what: str) -> Path:
        """The layer unpacked under its digest (present = complete: it is renamed in)."""
        target = user_cache_dir("base") / "x" / desc.digest.partition(":")[2]
        if not target.is_dir():
            data = self.puller.blob(self.ref, desc.digest, f"{self.what}: {what}")
            unpack_tar(data, target, f"{self.what}: {what}")
        return target

    def package(self, name: str, arch: Arch, *, offline: bool = False) -> Package:
        for desc in self.manifest(arch).layers:
            if (
                desc.media_type == MEDIA_PACKAGE
                and (desc.annotations or {}).get(ANNOTATION_PACKAGE) == name
            ):
                root = self._layer(desc, f"package {name}")
                control = parse_control((root / CONTROL_FILE).read_text())
                return Package(self.puller.cache.blob_path(desc.digest), root, control)
        raise BaseError(f"{self.what}: no package {name!r} for {arch.value}; push a base "
                        "that has it (cloudboot push base)")  # fmt: skip

    def download(self, name: str, arch: Arch) -> Path:
        raise BaseError(f"{self.what}: packages come from the base artifact, not apt-get")

    def demo_image(self, arch: Arch) -> DemoImage | None:
        for desc in self.manifest(arch).layers:
            if desc.media_type == MEDIA_DEMO_DISK:
                self.puller.blob(self.ref, desc.digest, f"{self.what}: demo disk")
                uname = (desc.annotations or {}).get(ANNOTATION_UNAME, "")
                return DemoImage(self.puller.cache.blob_path(desc.digest), uname)
        return None


def packages_for(
    base: str | None,
    public_key: Path | None,
    registry: Callable[[], RegistryClient] | None = None,
    *,
    offline: bool = False,
) -> DebCache:
    """The recipe's package source: its ``[base]`` artifact if it names one, else apt."""
    if base is None:
        return DebCache()
    return BasePackages(base, public_key, registry or RegistryClient, offline=offline)
