"""Publishing plans, kernel artifacts and indexes, signed, in a safe order.

The order is the safety property (docs/wire-formats.md §2.7): blobs, then the manifest
by digest, then its signature, and only then the tag. A reader that follows the tag
therefore never meets a manifest with missing blobs or without its signature, even when
the registry dies half-way and the push resumes after retries.

Manifests are canonical bytes and annotations never come from the wall clock, so
publishing an unchanged plan again finds the tag already at its digest and sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import (
    MEDIA_INDEX,
    Descriptor,
    Index,
    LayerRole,
    Manifest,
    Platform,
    Ref,
    artifact_manifest,
    digest_of,
    is_index_media_type,
    plan_manifest,
)
from publisher.pins import TagLookups, next_version, pin_refs, resolve_pins
from publisher.plancheck import CheckedPlan, load_plan
from publisher.registry import Blob, RegistryClient, RegistryError
from publisher.sigmemory import SignatureMemory, learn_signatures, remembered_signatures
from publisher.signing import SigningKey
from publisher.sigtag import (
    Signatures,
    existing_signatures,
    needs_signature,
    put_signature,
    speculative_signature_blobs,
    split_signatures,
    tag_version,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PushResult:
    ref: str
    digest: str
    size: int
    signature_tag: str | None
    uploaded: bool
    uploaded_bytes: int

    def __str__(self) -> str:
        return f"{self.ref}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _current_tag(client: RegistryClient, ref: Ref, digest: str) -> str | None:
    """Where ``ref``'s tag points now, asking the registry only when the answer matters.

    If this client last saw the tag at another digest, the tag has to move whatever the
    registry says (a PUT of the same bytes is harmless), so no lookup is spent on it.
    """
    remembered = client.memory.tag(ref)
    if remembered is not None and remembered != digest:
        return remembered
    info = client.probe_manifest(ref)  # unreadable: move it; the PUT rewrites the tag
    return info.digest if info else None


def _lost_blobs(exc: RegistryError) -> bool:
    return exc.status == 400 and "BLOB_UNKNOWN" in str(exc)


@dataclass(frozen=True)
class PreparedPush:
    """A publish done up to, not including, moving the tag.

    The blobs, the manifest by digest and its signature are in the registry, so what is
    left (``commit``) is one manifest PUT. The watcher prepares while its debounce window
    is still open and commits when it closes; a prepared push that is never committed
    leaves only an untagged, signed manifest behind, never an unsigned tag.
    """

    ref: Ref
    digest: str
    manifest: bytes
    media_type: str
    signature_tag: str | None
    move_tag: bool  # the tag points elsewhere (or nowhere) and ``ref`` has a tag
    wrote: bool  # blobs, manifest or signature were written while preparing
    sent: int  # blob bytes uploaded while preparing
    #: Upload sessions to open for the next publish here once this one is done (0: none).
    next_uploads: int = 0


def publish(
    client: RegistryClient,
    ref: Ref,
    manifest_bytes: bytes,
    media_type: str,
    blobs: Sequence[Blob],
    key: SigningKey | None = None,
) -> PushResult:
    """Blobs, manifest by digest, signature, tag; a no-op when the tag is already there."""
    return commit(client, prepare(client, ref, manifest_bytes, media_type, blobs, key))


def prepare(
    client: RegistryClient,
    ref: Ref,
    manifest_bytes: bytes,
    media_type: str,
    blobs: Sequence[Blob],
    key: SigningKey | None = None,
    pins: Mapping[str, str] | None = None,
    seen: SignatureMemory | None = None,
) -> PreparedPush:
    """Everything of ``publish`` before the tag move, in the order of docs/wire-formats.md §2.7.

    The independent first steps (tag lookup, blob uploads, existing signatures) run
    concurrently; the manifest and signature PUTs run one after the other. If the
    registry lost blobs this client believed were there (a wiped embedded registry), the
    manifest PUT says so; the beliefs are dropped and the preparation redone. ``seen``:
    signatures remembered by content (``publisher.sigmemory``), so an unchanged,
    signed artifact costs a HEAD of its signature tag instead of reading it.
    """
    args = (client, ref, manifest_bytes, media_type, blobs, key, dict(pins or {}), seen)
    try:
        return _prepare(*args)
    except RegistryError as exc:
        if not _lost_blobs(exc):
            raise
        log.warning("registry lost blobs this client had seen; publishing again", ref=ref.name)
        client.forget_blobs(ref)
        return _prepare(*args)


def commit(client: RegistryClient, prepared: PreparedPush) -> PushResult:
    """Move the tag to a prepared (uploaded and signed) manifest, if it is not there yet."""
    ref = prepared.ref
    if prepared.move_tag:
        client.put_manifest(ref, prepared.manifest, prepared.media_type, ref.reference)
    if prepared.next_uploads:  # a repeat publisher: the next one will want as many sessions
        client.prepare_uploads(ref, prepared.next_uploads)
    changed = prepared.wrote or prepared.move_tag
    if changed:  # debug: every caller reports the result once itself (stdout or its stage line)
        log.debug(
            "published",
            ref=str(ref),
            digest=prepared.digest,
            signature_tag=prepared.signature_tag,
            uploaded_bytes=prepared.sent,
        )
    return PushResult(
        str(ref),
        prepared.digest,
        len(prepared.manifest),
        prepared.signature_tag,
        changed or prepared.sent > 0,
        prepared.sent,
    )


def _prepare(
    client: RegistryClient,
    ref: Ref,
    manifest_bytes: bytes,
    media_type: str,
    blobs: Sequence[Blob],
    key: SigningKey | None,
    pins: dict[str, str],
    seen: SignatureMemory | None,
) -> PreparedPush:
    digest = digest_of(manifest_bytes)
    if ref.digest and ref.digest != digest:
        raise CloudbootError(
            f"content has digest {digest}, not the pinned {ref.digest}", where=str(ref)
        )
    tagged = bool(ref.tag) and not ref.digest
    repeat = client.memory.writes_to(ref)  # published here before: likely again soon
    pool = client.pool()
    # A client that never saw this tag (a one-off publish of many plans, mostly unchanged)
    # asks where it points before sending blobs: an unchanged plan then costs no blob
    # round trips (the registry accepted its manifest, so it holds its blobs).
    first_sight = tagged and client.memory.tag(ref) is None
    current = pool.submit(_current_tag, client, ref, digest) if tagged else None
    signatures = pool.submit(_signatures, client, ref, digest, key, seen) if key else None
    if first_sight and current is not None and current.result() == digest:
        blobs = ()
    version = next_version(())
    # The payload carries a fresh version, so uploading it ahead is a bet that a new
    # signature is due: taken only when this client saw the tag elsewhere (the watcher's
    # next publish), never on a re-publish that may change nothing.
    moving = tagged and client.memory.tag(ref) not in (None, digest)
    extra = speculative_signature_blobs(ref, digest, pins, version) if key and moving else []
    uploads = [pool.submit(client.push_blob, ref, blob) for blob in (*blobs, *extra)]
    sizes = [f.result() for f in uploads]
    sent = sum(sizes)
    at = current.result() if current else None
    move_tag = tagged and at != digest
    found = signatures.result() if signatures else None
    resign = found is not None and needs_signature(found, pins, move_tag)
    if resign and key is not None and found is not None and not found.complete:
        found = _signatures(client, ref, digest, key, None)  # a replacement keeps foreign ones
    sig_tag = cosign.signature_tag(digest) if key else None
    if not move_tag and not resign:
        return PreparedPush(ref, digest, manifest_bytes, media_type, sig_tag, False, False, sent)
    client.put_manifest(ref.with_digest(digest), manifest_bytes, media_type, digest)
    if key is not None and found is not None and resign:
        if move_tag and at is not None and not repeat:
            # Another publisher (another clock) may have signed what the tag holds now;
            # guests compare against that version, so go above it whatever our clock says.
            # A repeat publisher signed it itself, with this clock: no lookup needed.
            version = max(version, tag_version(client, ref, at, key) + 1)
        optional = cosign.trust_optional(pins, next_version(found.ours, now_ms=version))
        sent += put_signature(client, ref, digest, key, found, optional)
        if seen is not None:
            signed = Signatures((cosign.SignedPayload(ref.name, digest, optional),), ())
            learn_signatures(client, ref, digest, signed, seen)
    sessions = sum(1 for n in sizes if n) if repeat else 0
    return PreparedPush(
        ref, digest, manifest_bytes, media_type, sig_tag, move_tag, True, sent, sessions
    )


def _signatures(
    client: RegistryClient, ref: Ref, digest: str, key: SigningKey, seen: SignatureMemory | None
) -> Signatures:
    """Our and foreign signatures of ``digest``: remembered when ``seen`` knows them."""
    known = remembered_signatures(client, ref, digest, seen) if seen is not None else None
    if known is not None:
        return known
    found = split_signatures(existing_signatures(client, ref, digest)[1], key, digest)
    if seen is not None:
        learn_signatures(client, ref, digest, found, seen)
    return found


def publish_plan(
    client: RegistryClient,
    ref: Ref,
    plan_path: Path,
    key: SigningKey | None = None,
    annotations: Mapping[str, str] | None = None,
    *,
    upstream: bool = False,
) -> PushResult:
    """Validate ``plan_path`` for every bootable arch (``upstream``: also refuse forms only
    upstream's guest rejects), then publish it as a plan artifact."""
    plan = load_plan(plan_path, upstream=upstream)
    return commit(client, prepare_plan(client, ref, plan, key, annotations))


def prepare_plan(
    client: RegistryClient,
    ref: Ref,
    plan: CheckedPlan,
    key: SigningKey | None = None,
    annotations: Mapping[str, str] | None = None,
    lookups: TagLookups | None = None,
    seen: SignatureMemory | None = None,
) -> PreparedPush:
    """Everything of publishing a checked plan but the tag move (its tags pinned).

    ``lookups``: tag lookups shared by the plans of one run (``publisher.pins``);
    ``seen``: signatures remembered by content (``publisher.sigmemory``)."""
    title = "plan.hcl" if str(plan.path) == "-" else plan.path.name  # stdin has no name
    manifest, config = plan_manifest(plan.data, title, annotations)
    blobs = [Blob.of_bytes(config), Blob.of_bytes(plan.data)]
    pins: dict[str, str] = {}
    if key is not None:
        refs = plan.pin_refs if plan.pin_refs is not None else pin_refs(plan.data, str(plan.path))
        pins = resolve_pins(client, refs, lookups, plan=title)
    return prepare(client, ref, bytes(manifest), manifest.media_type, blobs, key, pins, seen)


def push_artifact(
    client: RegistryClient,
    ref: Ref,
    architecture: str,
    kernel: Path,
    initrd: Path | None = None,
    modules: Path | None = None,
    cmdline: str | None = None,
    key: SigningKey | None = None,
    annotations: Mapping[str, str] | None = None,
    extras: Mapping[LayerRole, Path] | None = None,
) -> PushResult:
    """A kernel/initrd artifact for one architecture; big files stream from disk.

    ``extras``: a distribution's extra layers (modloop, apkovl, squashfs; see
    docs/wire-formats.md §2.3), each a file published under its role's media type.
    """
    files = {LayerRole.KERNEL: kernel, LayerRole.INITRD: initrd, LayerRole.MODULES: modules}
    files.update(extras or {})
    blobs: dict[LayerRole, Blob] = {}
    for role, path in files.items():
        if path is None:
            continue
        if not path.is_file():
            raise CloudbootError(f"{role.name.lower()} file not found", where=str(path))
        blobs[role] = Blob.of_file(path)
    if cmdline is not None:
        blobs[LayerRole.CMDLINE] = Blob.of_bytes(cmdline.rstrip("\n").encode())
    layers = {role: Descriptor(role.value, b.digest, b.size) for role, b in blobs.items()}
    manifest, config = artifact_manifest(architecture, layers, annotations)
    ordered = [Blob.of_bytes(config), *(blobs[r] for r in LayerRole if r in blobs)]
    return publish(client, ref, bytes(manifest), manifest.media_type, ordered, key)


def _copy_into(client: RegistryClient, source: Ref, target: Ref) -> Descriptor:
    """Make ``source``'s manifest (and blobs) exist in ``target``'s repository."""
    data, media_type, digest = client.get_manifest(source)
    if is_index_media_type(media_type):
        raise CloudbootError("an index entry must be a single-platform manifest", where=str(source))
    if (source.registry, source.repository) != (target.registry, target.repository):
        manifest = Manifest.from_bytes(data, what=str(source))
        same_registry = source.registry == target.registry
        for desc in (manifest.config, *manifest.layers):
            if same_registry and client.mount_blob(target, desc.digest, source.repository):
                continue
            client.push_blob(target, Blob.of_bytes(client.get_blob(source, desc.digest)))
        client.put_manifest(target.with_digest(digest), data, media_type, digest)
    return Descriptor(media_type, digest, len(data))


def push_index(
    client: RegistryClient,
    ref: Ref,
    platforms: Sequence[tuple[str, Ref]],
    key: SigningKey | None = None,
    annotations: Mapping[str, str] | None = None,
) -> PushResult:
    """A multi-arch index whose entries are the given per-arch manifests (copied in)."""
    if not platforms:
        raise CloudbootError("an index needs at least one -p linux/ARCH=REF", where=str(ref))
    entries = []
    for arch, source in platforms:
        desc = _copy_into(client, source, ref)
        entries.append(
            Descriptor(desc.media_type, desc.digest, desc.size, platform=Platform(arch, "linux"))
        )
    index = Index(tuple(entries), annotations=dict(annotations or {}) or None)
    return publish(client, ref, bytes(index), MEDIA_INDEX, [], key)
