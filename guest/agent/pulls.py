"""What the agent pulls with the registry client (guest.agent.fetch): the plan, cosign
signatures, a plan's artifacts bound to the image's key, and the boot layers merged
(docs/wire-formats.md §2, §3; docs/trust-model.md).

Every size a manifest announces is held against a bound of ours before the blob is
requested; the client checks each blob's digest while it streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from guest.agent.fetch import FetchError, NotFoundError, RegistryClient, Resolved
from guest.agent.layers import MAX_APKOVL, Extras
from guest.agent.stage import MAX_BOOT_FILE
from guest.contract import cosign, oci

#: Upper bounds on what a descriptor may announce, checked before anything is fetched: a
#: manifest fetched by tag is not verified yet, so its sizes are claims.
MAX_PLAN_BLOB = 4 << 20
MAX_SIGNATURE_BLOB = 1 << 20
MAX_CMDLINE_BLOB = 64 << 10


def pull_plan(client: RegistryClient, ref: oci.Ref, architecture: str) -> tuple[Resolved, bytes]:
    """The plan bytes: first plan-type layer of the manifest for linux/<architecture>."""
    resolved = client.resolve(ref, architecture)
    layer = resolved.manifest.plan_layer()
    return resolved, client.blob(ref, layer, limit=MAX_PLAN_BLOB)


def verify_signature(
    client: RegistryClient, ref: oci.Ref, digest: str, public_key: cosign.PublicKey
) -> cosign.SignedPayload:
    """Check the cosign signature of ``digest`` stored at ``sha256-<hex>.sig`` next to it.

    The identity check compares the repository path only: the guest reaches the registry
    under another host name than the publisher did (10.0.2.2 versus 127.0.0.1), while the
    digest is what actually binds the signature to the content.
    """
    sig_ref = ref.with_tag(cosign.signature_tag(digest))
    try:
        data, _media, _d = client.manifest(sig_ref)
    except NotFoundError:
        raise cosign.NoSignatureError(f"not signed: no {sig_ref.tag} in {ref.name}") from None
    sig_manifest = oci.Manifest.from_bytes(data, what=f"signature manifest {sig_ref}")
    candidates = [
        (client.blob(sig_ref, s.descriptor, limit=MAX_SIGNATURE_BLOB), s.signature_b64)
        for s in cosign.signature_layers(sig_manifest)
    ]
    signed = cosign.check_signatures(public_key, digest, candidates)
    signed_repo = signed.docker_reference.split("/", 1)[-1]
    if signed_repo != ref.repository:
        raise cosign.DigestMismatchError(
            f"signature names repository {signed_repo!r}, the plan lives in {ref.repository!r}"
        )
    return signed


@dataclass(frozen=True)
class ArtifactTrust:
    """What binds a plan's OCI artifacts to the key (docs/trust-model.md).

    ``pins`` come from the plan's verified signature (ref as the plan names it ->
    digest); ``key`` is the image's public key; ``enforce`` refuses an artifact that is
    neither pinned nor signed, otherwise it is fetched by tag and reported.
    """

    pins: Mapping[str, str]
    key: cosign.PublicKey | None
    enforce: bool


@dataclass(frozen=True)
class Bound:
    """An artifact ref as it will be fetched, and how it is trusted (for the log)."""

    ref: oci.Ref
    how: str
    verified: bool


def bind_artifact(client: RegistryClient, ref: oci.Ref, trust: ArtifactTrust) -> Bound:
    """Turn a plan's artifact ref into one fetched by a digest the key vouches for.

    A digest in the plan is covered by the plan's signature; a tag is replaced by the
    digest the signature pinned; otherwise the artifact's own cosign signature (same key)
    must verify, and the digest it signs is what is fetched. Under enforce anything else
    is a ``SigningError`` naming the artifact.
    """
    if ref.digest:
        return Bound(ref, "by digest in the plan", True)
    pinned = trust.pins.get(str(ref))
    if pinned:
        return Bound(ref.with_digest(pinned), f"pinned by the plan signature to {pinned}", True)
    why = "no public key in the image"
    if trust.key is not None:
        _data, _media, top = client.manifest(ref)
        try:
            verify_signature(client, ref, top, trust.key)
        except cosign.SigningError as exc:
            why = str(exc)
        else:
            return Bound(ref.with_digest(top), f"own signature verified ({top})", True)
    if trust.enforce:
        raise cosign.SigningError(
            f"artifact {ref} is not pinned by the plan signature and not signed: {why}",
            where=str(ref),
        )
    return Bound(ref, f"NOT VERIFIED (neither pinned nor signed: {why})", False)


@dataclass(frozen=True)
class OciBoot:
    """Kernel, initrd (modules and apkovl joined on), the artifact's own cmdline, if any,
    and what its extra layers add to the target's command line."""

    kernel: bytes
    initrd: bytes
    cmdline: str | None
    extras: Extras = field(default_factory=Extras)
    #: What kernel and initrd are made of: a digest over every chosen layer's role and
    #: digest (verified as each blob was read), so equal content means equal files; the
    #: stamp of the staged files (guest.agent.stage.write_files).
    content: str | None = None


def join_initrd(initrd: bytes, modules: bytes) -> bytes:
    """Concatenate cpio archives the way the kernel unpacks them (zero padding is skipped)."""
    if not modules:
        return initrd
    pad = (-len(initrd)) % 4
    return initrd + bytes(pad) + modules


def pull_boot(
    client: RegistryClient,
    refs: list[oci.Ref],
    architecture: str,
    sink: Callable[[bytes], None] | None = None,
) -> OciBoot:
    """Merge the artifact layers of refs in order (later wins per role); a modloop or
    squashfs is pointed at by its blob URL, not fetched (guest.agent.layers)."""
    found: dict[oci.LayerRole, tuple[oci.Ref, oci.Descriptor]] = {}
    for ref in refs:
        resolved = client.resolve(ref, architecture)
        for role in oci.ARTIFACT_ROLES:
            layer = resolved.manifest.find_layer(role)
            if layer is not None:
                found[role] = (ref, layer)
    if oci.LayerRole.KERNEL not in found:
        raise FetchError("no kernel layer in " + ", ".join(str(r) for r in refs))

    def get(role: oci.LayerRole) -> bytes:
        if role not in found:
            return b""
        ref, desc = found[role]
        limit = MAX_CMDLINE_BLOB if role == oci.LayerRole.CMDLINE else MAX_BOOT_FILE
        return client.blob(ref, desc, sink, limit=limit)

    def url(role: oci.LayerRole) -> str | None:
        return client.blob_url(found[role][0], found[role][1].digest) if role in found else None

    apkovl = None
    if oci.LayerRole.APKOVL in found:
        ref, desc = found[oci.LayerRole.APKOVL]
        apkovl = client.blob(ref, desc, sink, limit=MAX_APKOVL)
    extras = Extras(url(oci.LayerRole.MODLOOP), url(oci.LayerRole.SQUASHFS), apkovl)
    cmdline = get(oci.LayerRole.CMDLINE).decode("utf-8", errors="replace").strip() or None
    initrd = extras.initrd(join_initrd(get(oci.LayerRole.INITRD), get(oci.LayerRole.MODULES)))
    layers = sorted(f"{role.value} {desc.digest}\n" for role, (_, desc) in found.items())
    content = "sha256:" + hashlib.sha256("".join(layers).encode()).hexdigest()
    return OciBoot(get(oci.LayerRole.KERNEL), initrd, cmdline, extras, content)
