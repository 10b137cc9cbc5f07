"""``cloudboot build``: recipe -> initramfs -> UKI per arch -> hybrid boot.iso (+ .sig).

Incremental: a fingerprint of every input (recipe text, arches, command lines,
SOURCE_DATE_EPOCH, and size+mtime of every input file: the builder's own code, the
recipe's files, and with the guest-agent init everything the agent's packer reads) is
stored next to the image; when it matches, nothing is rebuilt. When only the UKI's or the
ISO's own inputs changed (the command line), each arch's compressed initramfs comes from a
content-addressed cache (``publisher.media.buildcache``) keyed by the same kind of
fingerprint of its inputs alone. The image is written to a temp
file in the same directory and renamed, so a VM never sees a half-written boot.iso and a
failed build leaves the previous one in place. Timestamps and GUIDs derive from the
inputs only, so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

import guest.contract
import publisher
from guest.contract.arch import Arch
from guest.contract.fsutil import locked, replacing, write_atomic
from guest.contract.gpt import guid_from
from publisher.config import Config
from publisher.media import cpio
from publisher.media.base import packages_for
from publisher.media.buildcache import BlobCache, stat_stamp
from publisher.media.debs import DebCache
from publisher.media.esp import esp_size
from publisher.media.guestpack import PackInputs, pack_inputs, tree_files
from publisher.media.initramfs import KernelInputs, initramfs_entries
from publisher.media.iso import write_boot_iso
from publisher.media.kernelsrc import KernelSources
from publisher.media.recipe import (
    ArchRecipe,
    Recipe,
    RecipeError,
    Source,
    SourceKind,
    check_public_key,
    configured,
    load_recipe,
)
from publisher.media.uki import UkiParts, build_uki
from publisher.registry import RegistryClient, client_from_config
from publisher.run import require_tool, run
from publisher.signing import SigningKey, sign_blob

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int], None]
STUB_PATH = "usr/lib/systemd/boot/efi/linux{suffix}.efi.stub"


@dataclass
class BuildResult:
    output: Path
    signature: Path | None
    skipped: bool
    arches: list[Arch]
    timings: dict[str, float] = field(default_factory=dict)
    size: int = 0
    reused: list[str] = field(default_factory=list)  # intermediates taken from the cache

    def to_json(self) -> dict[str, object]:
        return {
            "output": str(self.output),
            "signature": str(self.signature) if self.signature else None,
            "skipped": self.skipped,
            "arches": [a.value for a in self.arches],
            "size": self.size,
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
            "reused": self.reused,
        }


@dataclass(frozen=True)
class ArchInputs:
    """One arch's inputs resolved to files on disk."""

    arch: Arch
    kernel: KernelInputs
    stub: Path
    busybox: Path
    cmdline: str
    files: tuple[Path, ...]  # the recipe's files the fingerprint must watch
    pack: PackInputs | None = None  # the guest agent's inputs (init = "guest-agent"): watched too

    def watched(self) -> list[str | Path]:
        return [*self.files, *(self.pack.files() if self.pack else ())]


def source_epoch() -> int:
    """SOURCE_DATE_EPOCH, or 0: an unset epoch must not make builds differ."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return int(value)
    except ValueError:
        raise RecipeError(f"SOURCE_DATE_EPOCH is not an integer: {value!r}") from None


def _resolve_file(source: Source, arch: Arch, cache: DebCache, inner: str, offline: bool) -> Path:
    if source.kind is SourceKind.FILE:
        return source.path
    pkg = cache.package(source.value, arch, offline=offline)
    path = pkg.root / inner
    if not path.is_file():
        raise RecipeError(f"{source.key}: Debian package {pkg.deb.name} has no /{inner}")
    return path


def resolve_arch(
    spec: ArchRecipe,
    recipe: Recipe,
    cache: DebCache,
    cmdline: str | None,
    offline: bool,
    *,
    sources: KernelSources | None = None,
    agent_repo: Path | None = None,
) -> ArchInputs:
    """One arch's inputs as files; ``sources`` says how OCI and own-build kernels resolve,
    ``agent_repo`` where the guest agent is packed from (default: this installation)."""
    arch = spec.arch
    sources = sources or KernelSources(debs=cache, offline=offline)
    resolved = sources.resolve(spec, recipe)
    stub = _resolve_file(spec.stub, arch, cache, STUB_PATH.format(suffix=arch.efi_suffix),
                         offline)  # fmt: skip
    busybox = _resolve_file(spec.busybox, arch, cache, "bin/busybox", offline)
    pack = None
    if recipe.initramfs.init == "guest-agent":
        pack = pack_inputs(arch, debs=cache, repo=agent_repo, offline=offline)
    return ArchInputs(arch, resolved.kernel, stub, busybox, recipe.cmdline_for(arch, cmdline),
                      (*resolved.files, stub, busybox), pack)  # fmt: skip


def builder_code() -> list[str]:
    """The builder's own code, found where it lives rather than listed by hand: every
    module of ``publisher`` and of the guest contract it builds with (GPT, arch, EFI)."""
    roots = (Path(publisher.__file__).parent, Path(guest.contract.__file__).parent)
    return [p for root in roots for p in tree_files(root)]


def _initramfs_files(recipe: Recipe) -> list[str | Path]:
    """The recipe's own files that go into every arch's initramfs."""
    watched: list[str | Path] = []
    if recipe.cosign_public_key is not None:
        watched.append(recipe.cosign_public_key)
    if recipe.registry_ca is not None:
        watched.append(recipe.registry_ca)
    for spec in recipe.initramfs.files:
        watched.append(spec.src)
    for spec in recipe.initramfs.trees:
        watched += sorted(spec.src.rglob("*"))
    return watched


def initramfs_key(recipe: Recipe, item: ArchInputs, epoch: int) -> str:
    """Hash of everything one arch's compressed initramfs is made of: the ``fingerprint``
    below minus what only the UKI or the ISO use (the command line, the stub, sbsign)."""
    spec = recipe.initramfs
    doc = {
        "arch": item.arch.value,
        "epoch": epoch,
        # Every field of [initramfs] (init, compression, modules, on-demand modules,
        # files and trees): a field added later cannot be forgotten here.
        "spec": repr(spec),
        "kernel": [item.kernel.uname, *map(stat_stamp, item.watched())],
        "files": [stat_stamp(p) for p in [*builder_code(), *_initramfs_files(recipe)]],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def fingerprint(recipe: Recipe, inputs: Sequence[ArchInputs], epoch: int, signed: bool) -> str:
    """Hash of everything that can change the output (files by size and mtime)."""
    watched: list[str | Path] = [*builder_code(), *_initramfs_files(recipe)]
    for extra in (recipe.secureboot_key, recipe.secureboot_cert):
        if extra is not None:
            watched.append(extra)
    doc = {
        "recipe": recipe.digest,
        "epoch": epoch,
        "signed": signed,
        "arches": [
            [i.arch.value, i.cmdline, i.kernel.uname, *map(stat_stamp, i.watched())] for i in inputs
        ],
        "files": [stat_stamp(p) for p in watched],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def make_initrd(recipe: Recipe, inputs: ArchInputs, epoch: int, *, reuse: bool = True) -> bytes:
    """The compressed initramfs: most of a build's time, hence ``BlobCache``'d by
    ``initramfs_key`` (and its agent payload by ``packcache``, unless not ``reuse``)."""
    entries = initramfs_entries(recipe, inputs.arch, inputs.kernel, inputs.busybox, inputs.pack,
                                reuse_pack=reuse)  # fmt: skip
    return cpio.compress(cpio.newc(entries, mtime=epoch), recipe.initramfs.compression)


def make_uki(recipe: Recipe, inputs: ArchInputs, epoch: int, initrd: bytes | None = None) -> bytes:
    if initrd is None:
        initrd = make_initrd(recipe, inputs, epoch)
    parts = UkiParts(inputs.stub.read_bytes(), inputs.kernel.vmlinuz.read_bytes(), initrd,
                     inputs.cmdline, inputs.kernel.uname)  # fmt: skip
    return build_uki(parts, inputs.arch)


def sbsign(uki: bytes, key: Path, cert: Path, workdir: Path) -> bytes:
    """Authenticode-sign a UKI with sbsign and check it with sbverify."""
    sign_tool = require_tool("sbsign", "sbsigntool")
    verify_tool = require_tool("sbverify", "sbsigntool")
    src, dst = workdir / ".uki-unsigned.efi", workdir / ".uki-signed.efi"
    try:
        src.write_bytes(uki)
        run([sign_tool, "--key", key, "--cert", cert, "--output", dst, src])
        run([verify_tool, "--cert", cert, dst])
        return dst.read_bytes()
    finally:
        for p in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class _Stages:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.total = total
        self.done = 0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.progress:
            self.progress(name, self.done, self.total)
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.done += 1
        if self.progress:
            self.progress(name, self.done, self.total)


def stamp_path(out: Path) -> Path:
    return out.with_name(out.name + ".inputs")


def build_boot_iso(
    recipe: Recipe,
    out: Path,
    arches: Sequence[Arch],
    cmdline: str | None = None,
    progress: Progress | None = None,
    *,
    signing_key: SigningKey | None = None,
    cache: DebCache | None = None,
    offline: bool = False,
    force: bool = False,
    registry: Callable[[], RegistryClient] | None = None,
    build_kernel: bool = False,
    sources: KernelSources | None = None,
    agent_repo: Path | None = None,
    blob_cache: Path | None = None,
) -> BuildResult:
    """Build ``out`` (and ``out.sig``, cosign sign-blob format, when ``signing_key`` is given).

    Skips all work when the inputs' fingerprint matches the last build of ``out``; else
    reuses each arch's compressed initramfs from ``cache_dir(out)`` when its own inputs
    are unchanged (a cmdline edit), unless ``force``.
    ``registry`` makes the client for OCI kernel sources (the workspace's registry
    settings; called only if the network is needed); ``build_kernel`` runs make for a
    ``{ build = ... }`` kernel whose inputs have no cached build yet; ``agent_repo``
    holds the ``guest`` package the guest agent is packed from; ``blob_cache`` another
    image's intermediates to share (a canary's boot.iso reuses the workspace's).
    """
    if not arches:
        raise RecipeError("no architecture selected", where=str(recipe.path))
    check_public_key(recipe)
    arches = list(dict.fromkeys(arches))
    if cache is None:  # the recipe's [base] artifact, else apt
        cache = packages_for(recipe.base, recipe.cosign_public_key, registry, offline=offline)
    if sources is None:
        sources = KernelSources(debs=cache, offline=offline, build_missing=build_kernel)
        if registry is not None:
            sources.registry = registry
    epoch = source_epoch()
    stages = _Stages(progress, 3 + len(arches) + (1 if signing_key else 0))
    with stages.stage("resolve"):
        inputs = [resolve_arch(recipe.for_arch(a), recipe, cache, cmdline, offline,
                               sources=sources, agent_repo=agent_repo)
                  for a in arches]  # fmt: skip
        print_ = fingerprint(recipe, inputs, epoch, signing_key is not None)
    sig_path, stamp = out.with_name(out.name + ".sig"), stamp_path(out)
    sig = sig_path if signing_key else None
    out.parent.mkdir(parents=True, exist_ok=True)  # the publish lock is taken on it
    with locked(publish_lock(out)):  # not while another build swaps out, .sig and stamp
        if (not force and out.is_file() and (sig is None or sig.is_file()) and stamp.is_file()
                and stamp.read_text() == print_):  # fmt: skip
            log.info("boot.iso up to date", output=str(out))
            return BuildResult(out, sig, True, arches, stages.timings, out.stat().st_size)
    efi_files: dict[str, bytes] = {}
    blobs = BlobCache(blob_cache or cache_dir(out))
    reused = []
    for item in inputs:
        with stages.stage(f"uki-{item.arch.value}"):
            kind, key = f"initramfs-{item.arch.value}", initramfs_key(recipe, item, epoch)
            initrd = None if force else blobs.get(kind, key)
            if initrd is None:
                initrd = make_initrd(recipe, item, epoch, reuse=not force)
                blobs.put(kind, key, initrd)
            else:
                reused.append(kind)
            uki = make_uki(recipe, item, epoch, initrd)
        if recipe.secureboot_key and recipe.secureboot_cert:
            with stages.stage(f"sbsign-{item.arch.value}"):
                uki = sbsign(uki, recipe.secureboot_key, recipe.secureboot_cert, out.parent)
        efi_files[item.arch.efi_boot_file] = uki
    signature = None
    # Builds of the same output running at once (two terminals, two CI jobs) publish their
    # boot.iso, .sig and stamp under one lock, taken once the image is written and signed
    # and held over its rename: the three always come from one build. Without it the
    # renames could interleave into an image beside another build's signature.
    with contextlib.ExitStack() as publishing:
        with replacing(out, durable=True) as tmp:  # renamed (and fsynced) when done
            with stages.stage("iso"):
                content = hashlib.sha256()
                for name in sorted(efi_files):
                    content.update(name.encode() + hashlib.sha256(efi_files[name]).digest())
                seed = content.hexdigest() + str(epoch)
                write_boot_iso(
                    tmp, efi_files, esp_size=esp_size([len(d) for d in efi_files.values()]),
                    epoch=epoch, disk_guid=guid_from("boot.iso disk", seed),
                    esp_guid=guid_from("boot.iso esp", seed),
                    volume_id=int.from_bytes(guid_from("fat", seed).bytes[:4], "little"),
                )  # fmt: skip
            if signing_key is not None and sig is not None:
                with stages.stage("sign"):
                    signature = sign_blob(signing_key, tmp.read_bytes())
            publishing.enter_context(locked(publish_lock(out)))
        with stages.stage("rename"):
            if sig is not None and signature is not None:
                write_atomic(sig, signature.encode(), durable=True)
            else:  # unsigned: a .sig an earlier build left would sign other bytes
                sig_path.unlink(missing_ok=True)
            write_atomic(stamp, print_.encode())  # a torn stamp would only force a rebuild
    return BuildResult(out, sig, False, arches, stages.timings, out.stat().st_size, reused)


def publish_lock(out: Path) -> Path:
    """What ``out``, its ``.sig`` and its stamp are replaced under a flock of: the
    directory they sit in, so a failed build leaves no lock file."""
    return out.parent


def cache_dir(out: Path) -> Path:
    """Where ``out``'s intermediates are kept (``boot.iso.cache/`` next to it)."""
    return out.with_name(out.name + ".cache")


def build_from_config(
    config: Config,
    signing_key: SigningKey | None,
    *,
    arches: Sequence[Arch] | None = None,
    out: Path | None = None,
    cmdline: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
    offline: bool = False,
    build_kernel: bool = False,
    cache: DebCache | None = None,
) -> BuildResult:
    """boot.iso as the workspace says: ``[build].recipe`` (read again on every call: it is
    one of the files being edited) into ``[build].iso`` for the media arches, OCI kernels
    through the ``[registry]`` settings. ``cloudboot build`` (whose options override),
    ``cloudboot up`` and the watcher's kernel stage all build through here. ``cache``:
    where packages come from (default: the recipe's ``[base]`` artifact, else apt)."""
    return build_boot_iso(
        configured(load_recipe(config.build.recipe), config),
        out or config.build.iso,
        arches or config.media_arches(),
        cmdline,
        progress,
        signing_key=signing_key,
        offline=offline,
        force=force,
        build_kernel=build_kernel,
        registry=lambda: client_from_config(config.registry),
        cache=cache,
    )
