"""``cloudboot push base REF``: publish every Debian-derived boot input as one signed index.

Run on a Linux host with apt (a CI job, a build host): the packages come from the
per-user ``DebCache``, exactly what ``cloudboot build`` would use there. The layout and
media types are those publisher/media/base.py reads (its docstring is the reference).
Layers are deterministic (sorted tar members, zero times and owners, gzip without a
timestamp; the demo disk image is kept per inputs), so pushing the same packages again
from the same host uploads nothing and keeps the digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.fsutil import creating
from guest.contract.oci import (
    ANNOTATION_TITLE,
    MEDIA_INDEX,
    Descriptor,
    Index,
    Manifest,
    Platform,
    Ref,
)
from publisher import demodisk
from publisher.blob import Blob
from publisher.demodisk import POWER_BUTTON_MODULES, ensure_demo_disk
from publisher.media import kmods
from publisher.media.base import (
    ANNOTATION_PACKAGE,
    ANNOTATION_UNAME,
    ANNOTATION_VERSION,
    ARTIFACT_TYPE,
    MEDIA_BASE_CONFIG,
    MEDIA_DEMO_DISK,
    MEDIA_PACKAGE,
)
from publisher.media.debs import DebCache, Package, user_cache_dir
from publisher.media.guestpack import RUNTIME_PACKAGES
from publisher.media.recipe import Recipe, SourceKind
from publisher.push import PushResult, publish
from publisher.registry import RegistryClient
from publisher.signing import SigningKey

#: Modules a base carries besides the recipe's: the demo disk's power button, vfkit's
#: console (hvc0) and its power key.
EXTRA_MODULES = (*POWER_BUTTON_MODULES, "virtio_console", "gpio_keys")
#: Never needed at build time: documentation and the like.
DROP_PREFIXES = ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/bug")


@dataclass(frozen=True)
class Layer:
    blob: Blob  # streamed from its file when uploaded
    descriptor: Descriptor


def _members(root: Path, keep: set[str] | None) -> list[str]:
    """Relative paths under ``root`` in sorted order (``keep``: only these files)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel.startswith(DROP_PREFIXES) or rel.startswith("boot/System.map"):
                continue
            full = root / rel
            if keep is not None and not full.is_dir() and rel not in keep:
                continue
            found.append(rel)
    return found


def write_tar(root: Path, names: Iterable[str], out: Path, *, compress: bool) -> None:
    """A reproducible tar (gzip'd when ``compress``) of ``names`` under ``root``."""
    with out.open("wb") as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else None
        with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel in names:
                path = root / rel
                info = tar.gettarinfo(str(path), arcname=rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with path.open("rb") as src:
                        tar.addfile(info, src)
                else:
                    tar.addfile(info)
        if gz is not None:
            gz.close()


def _layer(path: Path, media_type: str, annotations: dict[str, str]) -> Layer:
    blob = Blob.of_file(path)
    return Layer(blob, Descriptor(media_type, blob.digest, blob.size, annotations))


def _kernel_keep(pkg: Package, wanted: Sequence[str]) -> set[str]:
    """The kernel image, its config and the closure of the wanted modules (plus indexes)."""
    keep = {p.relative_to(pkg.root).as_posix() for p in (pkg.root / "boot").glob("*")}
    for modules_dir in (pkg.root / "lib/modules").glob("*"):
        available = kmods.index_modules(modules_dir)
        builtin = kmods.builtin_modules(modules_dir)
        present = [m for m in wanted if kmods.module_key(m) in available or m in builtin]
        for name in kmods.resolve(present, available, builtin):
            keep.add(available[name].relative_to(pkg.root).as_posix())
        for index in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
            keep.add((modules_dir / index).relative_to(pkg.root).as_posix())
    return keep | {".control"}


def package_names(recipe: Recipe, arch: Arch) -> list[str]:
    """The Debian packages a build and ``cloudboot up`` of ``recipe`` can ask for."""
    spec = recipe.for_arch(arch)
    names = [s.value for s in (spec.kernel, spec.stub, spec.busybox) if s.kind is SourceKind.DEB]
    names += [f"linux-image-cloud-{arch.debian}", "busybox-static", *RUNTIME_PACKAGES]
    return list(dict.fromkeys(names))


def arch_layers(recipe: Recipe, arch: Arch, debs: DebCache, work: Path) -> list[Layer]:
    """Every layer of one arch's base manifest, written as files under ``work``."""
    layers = []
    wanted = [*recipe.initramfs.modules, *recipe.initramfs.on_demand_modules, *EXTRA_MODULES]
    packages: dict[str, Package] = {}
    for name in package_names(recipe, arch):
        pkg = debs.package(name, arch)
        packages[pkg.name] = pkg
        if name.startswith("linux-image-"):
            real = debs.kernel_package(name, arch)
            packages[real.name] = real
    for name, pkg in packages.items():
        keep = _kernel_keep(pkg, wanted) if (pkg.root / "boot").is_dir() else None
        version = pkg.control.get("Version", "")
        out = work / f"{name}.tar.gz"
        write_tar(pkg.root, _members(pkg.root, keep), out, compress=True)
        layers.append(_layer(out, MEDIA_PACKAGE, {
            ANNOTATION_PACKAGE: name, ANNOTATION_VERSION: version,
            ANNOTATION_TITLE: f"{name}_{version}_{arch.debian}.tar.gz",
        }))  # fmt: skip
    out, release = demo_disk_layer(arch, debs, work)
    layers.append(_layer(out, MEDIA_DEMO_DISK, {
        ANNOTATION_UNAME: release, ANNOTATION_TITLE: "demo-target.raw.gz",
    }))  # fmt: skip
    return layers


def demo_disk_layer(arch: Arch, debs: DebCache, work: Path) -> tuple[Path, str]:
    """The gzip'd demo disk, made once per (kernel, busybox, demodisk code) on this host.

    mkfs -d copies each file's ctime into the image, so two images of the same inputs
    differ; keeping the first one keeps the base's digest when it is pushed again, and
    two pushes at once publish the same image (fsutil.creating: the entry never changes
    once there, so a push that hashed it reads the same bytes to upload them).
    """
    kernel = debs.kernel_package(f"linux-image-cloud-{arch.debian}", arch)
    busybox = debs.package("busybox-static", arch)
    code = Path(demodisk.__file__).read_bytes()
    key = hashlib.sha256(f"{kernel.deb.name}\0{busybox.deb.name}\0".encode() + code)
    kept = user_cache_dir("base-demo") / f"{key.hexdigest()[:32]}.raw.gz"
    release = max((kernel.root / "boot").glob("vmlinuz-*")).name.removeprefix("vmlinuz-")
    if not kept.is_file():
        disk = ensure_demo_disk(work / "demo.raw", arch, cache=debs, force=True)
        with (
            creating(kept) as tmp,  # linked in after the gzip stream is closed, unless
            # another push made it meanwhile: then that one stays (its bytes may be hashed)
            gzip.GzipFile(tmp, "wb", mtime=0) as dst,
            disk.path.open("rb") as src,
        ):
            while block := src.read(1 << 20):
                dst.write(block)
        disk.path.unlink()
    return kept, release


def push_base(
    client: RegistryClient,
    ref: Ref,
    recipe: Recipe,
    arches: Sequence[Arch],
    key: SigningKey | None,
    debs: DebCache | None = None,
) -> PushResult:
    """Per-arch manifests by digest, then the index at ``ref``, signed with ``key``."""
    debs = debs or DebCache()
    entries = []
    for arch in arches:
        with tempfile.TemporaryDirectory(prefix="cloudboot-base-") as tmp:
            layers = arch_layers(recipe, arch, debs, Path(tmp))
            versions = {
                (d.annotations or {})[ANNOTATION_PACKAGE]: (d.annotations or {})[ANNOTATION_VERSION]
                for d in (layer.descriptor for layer in layers)
                if d.media_type == MEDIA_PACKAGE
            }
            config = json.dumps(
                {"architecture": arch.oci, "os": "linux", "packages": versions},
                sort_keys=True, separators=(",", ":"),
            ).encode()  # fmt: skip
            manifest = Manifest(
                Descriptor.for_bytes(MEDIA_BASE_CONFIG, config),
                tuple(layer.descriptor for layer in layers),
                artifact_type=ARTIFACT_TYPE,
            )
            blobs = [Blob.of_bytes(config), *(layer.blob for layer in layers)]
            data = bytes(manifest)
            # by digest only: the index's signature covers it (the index lists its digest)
            list(client.pool().map(lambda blob: client.push_blob(ref, blob), blobs))
            digest = client.put_manifest(ref, data, manifest.media_type, manifest.digest)
            entries.append(Descriptor(manifest.media_type, digest, len(data),
                                      platform=Platform(arch.oci, "linux")))  # fmt: skip
    index = Index(tuple(entries))
    return publish(client, ref, bytes(index), MEDIA_INDEX, [], key)
