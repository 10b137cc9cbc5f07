"""The recipe's kernel source, whatever its kind, resolved to a kernel file and its modules.

One place decides what ``kernel = { deb | file | oci | build = ... }`` means on disk, so
``cloudboot build``, the watcher and the benches agree, and each kind's network and
cache rules (Debian package cache, OCI blobs by digest, own-kernel builds by input hash)
stay inside the module that owns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from guest.contract.arch import Arch
from publisher.media.debs import DebCache
from publisher.media.initramfs import KernelInputs
from publisher.media.kernelbuild import KernelBuildCache, KernelBuildSpec
from publisher.media.ocicache import OciCache
from publisher.media.ocikernel import OciKernelPuller
from publisher.media.recipe import ArchRecipe, Recipe, RecipeError, SourceKind
from publisher.registry import RegistryClient


@dataclass(frozen=True)
class ResolvedKernel:
    kernel: KernelInputs
    #: Files whose size/mtime (and path) decide whether boot.iso must be rebuilt.
    files: tuple[Path, ...]


@dataclass
class KernelSources:
    """How kernel sources resolve: caches, the registry, and whether to build a missing kernel.

    ``registry`` is called at most once, and only when an OCI source needs the network.
    """

    debs: DebCache = field(default_factory=DebCache)
    offline: bool = False
    registry: Callable[[], RegistryClient] = RegistryClient
    oci_cache: OciCache = field(default_factory=OciCache)
    builds: KernelBuildCache = field(default_factory=KernelBuildCache)
    #: Run ``make`` for a ``{ build = ... }`` source that has no cached result (slow!).
    build_missing: bool = False
    jobs: int | None = None
    _puller: OciKernelPuller | None = field(default=None, init=False, repr=False)

    def puller(self) -> OciKernelPuller:
        if self._puller is None:
            self._puller = OciKernelPuller(self.oci_cache, self.registry, offline=self.offline)
        return self._puller

    def resolve(self, spec: ArchRecipe, recipe: Recipe) -> ResolvedKernel:
        source, arch = spec.kernel, spec.arch
        if source.kind is SourceKind.DEB:
            pkg = self.debs.kernel_package(source.value, arch, offline=self.offline)
            vmlinuz = max((pkg.root / "boot").glob("vmlinuz-*"))
            uname = spec.uname or vmlinuz.name.removeprefix("vmlinuz-")
            modules = pkg.root / "lib" / "modules" / uname
            return ResolvedKernel(KernelInputs(vmlinuz, uname, modules), (pkg.deb,))
        if source.kind is SourceKind.FILE:
            kernel = KernelInputs(source.path, spec.uname, spec.modules_dir)
            return ResolvedKernel(kernel, (source.path,))
        if source.kind is SourceKind.OCI:
            return self._oci(spec, recipe)
        return self._build(spec, arch)

    def _oci(self, spec: ArchRecipe, recipe: Recipe) -> ResolvedKernel:
        source = spec.kernel
        public_key = None
        if source.verify:
            public_key = recipe.cosign_public_key
            if public_key is None:
                raise RecipeError(
                    f"{source.key}: an OCI kernel is verified by default and that needs"
                    " signing.cosign_public_key (or verify = false for an unsigned artifact)",
                    where=str(recipe.path),
                )
        pulled = self.puller().pull(
            source.value,
            spec.arch,
            what=source.key,
            uname=spec.uname,
            want_modules=bool(recipe.initramfs.modules) and spec.modules_dir is None,
            public_key=public_key,
        )
        modules = spec.modules_dir or pulled.modules_dir
        return ResolvedKernel(KernelInputs(pulled.vmlinuz, pulled.uname, modules), pulled.files)

    def _build(self, spec: ArchRecipe, arch: Arch) -> ResolvedKernel:
        source = spec.kernel
        assert source.config is not None  # the recipe fills in the default config
        build_spec = KernelBuildSpec.create(source.path, arch, source.config)
        found = self.builds.lookup(build_spec)
        if found is None and self.build_missing:
            found = self.builds.build(build_spec, self.jobs)
        if found is None:
            raise RecipeError(
                f"{source.key}: no cached kernel build of {source.path} for these inputs "
                f"({arch.value}, config {source.config}); run: cloudboot kernel build --src "
                f"{source.path} --arch {arch.value} --config {source.config}  (or cloudboot "
                "build --build-kernel)"
            )
        modules = spec.modules_dir or found.modules_dir
        kernel = KernelInputs(found.image, spec.uname or found.uname, modules)
        return ResolvedKernel(kernel, (found.image,))
