"""Kernel artifacts from an OCI registry (docs/wire-formats.md §2.3), cached by digest for
offline rebuilds.

A recipe's ``kernel = { oci = "REF" }`` names a cloud-boot kernel artifact: a manifest
(or an index that resolves to one per arch) whose layers are the kernel and, optionally,
a cpio.gz of ``/lib/modules/<uname>``. Every blob is checked against its digest and
stored under that digest in the per-user cache, so once a digest is there a rebuild
needs no network at all. A tag is a moving name: resolving it costs one HEAD request,
or, offline, the digest it had when it was last resolved (and the log says so).
``verify = true`` checks the cosign signature of what the ref points at with the
recipe's public key; a success is remembered per digest and key, so an offline rebuild
of a verified artifact stays verified without asking the registry again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.oci import (
    MEDIA_CONFIG,
    Index,
    LayerRole,
    Manifest,
    Ref,
    is_index_media_type,
    media_type_of,
    parse_ref,
)
from guest.contract.pubkey import load_public_key
from publisher.media.ocicache import OciCache, OciKernelError
from publisher.registry import RegistryClient

log = structlog.get_logger(__name__)

#: Where an artifact may state its kernel release: a config field and a manifest or
#: kernel-layer annotation (upstream's config has neither; both are our extension).
CONFIG_UNAME = "uname"
ANNOTATION_UNAME = "dev.cloud-boot.kernel.uname"
_MODULE_ROOTS = ("lib/modules", "usr/lib/modules")


# --- pure parts: bytes in, facts out ------------------------------------------------------


def bzimage_release(image: bytes) -> str | None:
    """The release an x86 bzImage states in its setup header (``kernel_version``), if any.

    Boot protocol 2.00+: ``HdrS`` at 0x202; the u16 at 0x20E points at a NUL-terminated
    version string 0x200 bytes further on, whose first word is ``uname -r``.
    """
    if len(image) < 0x210 or image[0x202:0x206] != b"HdrS":
        return None
    offset = int.from_bytes(image[0x20E:0x210], "little") + 0x200
    if not 0x200 < offset < len(image):
        return None
    text = image[offset : offset + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    words = text.split()
    return words[0] if words else None


def check_artifact_config(data: bytes, arch: Arch, what: str) -> dict[str, Any]:
    """The artifact config as a dict, refusing one built for another arch or OS."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OciKernelError(f"{what}: config blob is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise OciKernelError(f"{what}: config blob is not a JSON object")
    found = obj.get("architecture")
    if found not in (None, "", arch.oci):
        raise OciKernelError(f"{what}: artifact is for {found}, not {arch.oci} ({arch.value})")
    if obj.get("os") not in (None, "", "linux"):
        raise OciKernelError(f"{what}: artifact is for os {obj.get('os')!r}, not linux")
    return obj


def stated_release(config: Mapping[str, Any], *annotations: Mapping[str, str] | None) -> str:
    """The release the artifact states in its config or annotations, or ''."""
    value = config.get(CONFIG_UNAME)
    if isinstance(value, str) and value:
        return value
    for table in annotations:
        if table and table.get(ANNOTATION_UNAME):
            return table[ANNOTATION_UNAME]
    return ""


def module_releases(paths: Sequence[str]) -> dict[str, str]:
    """``uname -> directory`` for every ``[usr/]lib/modules/<uname>`` the paths contain."""
    found: dict[str, str] = {}
    for path in paths:
        parts = PurePosixPath(path.lstrip("/")).parts
        for root in _MODULE_ROOTS:
            depth = len(root.split("/"))
            if "/".join(parts[:depth]) == root and len(parts) > depth:
                found.setdefault(parts[depth], "/".join(parts[: depth + 1]))
    return found


# --- pulling ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciKernel:
    """A kernel artifact resolved to files in the cache."""

    ref: str
    digest: str  # what the ref resolved to (an index or a manifest)
    manifest_digest: str  # the arch's manifest
    vmlinuz: Path
    uname: str
    modules_dir: Path | None

    @property
    def files(self) -> tuple[Path, ...]:
        """Files whose identity decides the build fingerprint (paths carry the digests)."""
        return (self.vmlinuz,) if self.modules_dir is None else (self.vmlinuz, self.modules_dir)


class OciKernelPuller:
    """Resolves ``{ oci = REF }`` kernel sources through the cache and, when needed, a registry.

    ``client`` is called only when the network is really needed, so a fully cached
    rebuild never even builds a registry client.
    """

    def __init__(
        self, cache: OciCache, client: Callable[[], RegistryClient], *, offline: bool = False
    ) -> None:
        self.cache = cache
        self._client_factory = client
        self._client: RegistryClient | None = None
        self.offline = offline

    def client(self, what: str) -> RegistryClient:
        if self.offline:
            raise OciKernelError(
                f"{what} is not in the cache ({self.cache.root}) and --offline "
                "forbids the registry; build once without --offline"
            )
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def resolve_digest(self, ref: Ref, what: str) -> str:
        if ref.digest:
            return ref.digest
        last = self.cache.last_tag(ref)
        if self.offline:
            if last is None:
                raise OciKernelError(
                    f"{what}: tag {ref.tag!r} was never resolved, and --offline "
                    "forbids asking the registry"
                )
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last[1]))
            log.info(
                "offline: using the digest the tag had when last resolved",
                ref=str(ref),
                digest=last[0],
                resolved_at=when,
            )
            return last[0]
        try:
            info = self.client(what).head_manifest(ref)
        except CloudbootError as exc:
            hint = f" (--offline would use its last resolved digest {last[0]})" if last else ""
            raise OciKernelError(f"{what}: cannot resolve the tag: {exc}{hint}") from None
        if info is None:
            raise OciKernelError(f"{what}: no such manifest in the registry")
        self.cache.remember_tag(ref, info.digest)
        log.debug("tag resolved", ref=str(ref), digest=info.digest)
        return info.digest

    def blob(self, ref: Ref, digest: str, what: str, *, manifest: bool = False) -> bytes:
        """Content by digest from the cache, else from the registry (verified, then cached)."""
        data = self.cache.read_blob(digest)
        if data is not None:
            return data
        client = self.client(f"{what} {digest}")
        try:
            if manifest:
                data, _, _ = client.get_manifest(ref.with_digest(digest))
            else:
                data = client.get_blob(ref, digest)
        except CloudbootError as exc:
            raise OciKernelError(f"{what} {digest}: {exc.message}") from None
        self.cache.write_blob(digest, data)
        return data

    def manifest_for(self, ref: Ref, top: str, arch: Arch, what: str) -> tuple[Manifest, str]:
        data = self.blob(ref, top, f"{what}: manifest", manifest=True)
        if is_index_media_type(media_type_of(data)):
            try:
                entry = Index.from_bytes(data, what=f"{what} index").resolve(arch.oci)
            except CloudbootError as exc:
                raise OciKernelError(f"{what}: {exc}") from None
            data = self.blob(ref, entry.digest, f"{what}: {arch.oci} manifest", manifest=True)
            digest = entry.digest
        else:
            digest = top
        try:
            return Manifest.from_bytes(data, what=f"{what} manifest"), digest
        except CloudbootError as exc:
            raise OciKernelError(f"{what}: {exc}") from None

    def check_signature(self, ref: Ref, digest: str, public_key: Path, what: str) -> None:
        try:
            key_bytes = public_key.read_bytes()
        except OSError as exc:
            raise OciKernelError(
                f"{what}: verify = true needs signing.cosign_public_key, "
                f"but {public_key} cannot be read: {exc.strerror}"
            ) from None
        if self.cache.was_verified(ref.name, digest, key_bytes):
            log.debug("signature verified before", ref=str(ref), digest=digest)
            return
        client = self.client(f"{what}: the signature of {digest}")
        from publisher.refsign import verify_ref  # it imports the whole publishing stack

        try:
            verify_ref(client, ref.with_digest(digest), load_public_key(key_bytes))
        except CloudbootError as exc:
            raise OciKernelError(
                f"{what}: signature check of {digest} with {public_key} failed: {exc}"
            ) from None
        self.cache.mark_verified(ref.name, digest, key_bytes)
        log.info("kernel artifact signature verified", ref=str(ref), digest=digest)

    def pull(
        self,
        text: str,
        arch: Arch,
        *,
        what: str,
        uname: str = "",
        want_modules: bool = True,
        public_key: Path | None = None,
    ) -> OciKernel:
        """Resolve ``text`` for ``arch``; ``public_key`` set means: verify the signature first."""
        ref = parse_ref(text)
        what = f"{what}: {ref}"
        top = self.resolve_digest(ref, what)
        if public_key is not None:
            self.check_signature(ref, top, public_key, what)
        manifest, manifest_digest = self.manifest_for(ref, top, arch, what)
        config = check_artifact_config(
            self.blob(ref, manifest.config.digest, f"{what}: config"), arch, what
        )
        if manifest.config.media_type != MEDIA_CONFIG:
            log.debug("unusual artifact config type", ref=str(ref), type=manifest.config.media_type)
        try:
            kernel_desc = manifest.layer(LayerRole.KERNEL)
        except CloudbootError as exc:
            raise OciKernelError(f"{what}: {exc}") from None
        kernel = self.blob(ref, kernel_desc.digest, f"{what}: kernel layer")
        vmlinuz = self.cache.blob_path(kernel_desc.digest)
        stated = stated_release(config, manifest.annotations, kernel_desc.annotations)
        modules_desc = manifest.find_layer(LayerRole.MODULES)
        modules_dir = None
        if modules_desc is not None and want_modules:
            layer = modules_desc.digest
            tree = self.cache.modules_tree(
                layer,
                lambda: self.blob(ref, layer, f"{what}: modules layer"),
                f"{what}: modules layer {layer}",
            )
            uname, modules_dir = self._pick_modules(tree, uname or stated, what)
        uname = uname or stated or bzimage_release(kernel) or ""
        if want_modules and modules_dir is None:
            raise OciKernelError(
                f"{what}: the artifact has no modules layer "
                f"({LayerRole.MODULES.value}), but initramfs.modules wants "
                "modules; push one with --modules, set the arch's modules_dir, "
                "or set initramfs.modules = []"
            )
        return OciKernel(str(ref), top, manifest_digest, vmlinuz, uname, modules_dir)

    @staticmethod
    def _pick_modules(tree: Path, uname: str, what: str) -> tuple[str, Path]:
        paths = [p.relative_to(tree).as_posix() for p in tree.glob("*/modules/*")]
        paths += [p.relative_to(tree).as_posix() for p in tree.glob("usr/lib/modules/*")]
        releases = module_releases(paths)
        if uname:
            if uname not in releases:
                raise OciKernelError(
                    f"{what}: modules layer has no lib/modules/{uname} (it has: "
                    f"{', '.join(sorted(releases)) or 'nothing'})"
                )
            return uname, tree / releases[uname]
        if len(releases) != 1:
            raise OciKernelError(
                f"{what}: cannot tell the kernel release: the modules layer "
                f"has {len(releases)} lib/modules/* directories; set the arch's "
                "uname in the recipe"
            )
        ((uname, rel),) = releases.items()
        return uname, tree / rel
