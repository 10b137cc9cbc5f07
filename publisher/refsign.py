"""Signing and verifying what a ref points at now, after the fact (`cloudboot sign`,
`cloudboot verify`, a recipe's kernel artifact check).

A signature covers a digest, never a tag: ``sign_ref`` signs the digest the ref names at
this moment, with a fresh version and, for a plan, its tags pinned as at publish time
(docs/trust-model.md); publishing itself signs in ``publisher.push``.
"""

from __future__ import annotations

import structlog

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import MEDIA_PLAN, Manifest, Ref, is_index_media_type
from publisher.pins import next_version, plan_pins
from publisher.push import PushResult
from publisher.registry import RegistryClient, RegistryError
from publisher.signing import SigningKey
from publisher.sigtag import existing_signatures, put_signature, split_signatures

log = structlog.get_logger(__name__)


def resolve_digest(client: RegistryClient, ref: Ref) -> str:
    info = client.head_manifest(ref)
    if info is None:
        raise RegistryError(f"manifest unknown: {ref}", status=404)
    return info.digest


def sign_ref(client: RegistryClient, ref: Ref, key: SigningKey) -> PushResult:
    """Sign what ``ref`` points at now (the digest, so a later tag move is not covered).

    An explicit signature is a new publication: it always gets a fresh version (so it is
    the deliberate way to roll a tag back to older content, docs/trust-model.md), and a
    plan gets its tags pinned as at publish time. Our older signatures are replaced.
    """
    data, media_type, digest = client.get_manifest(ref)
    _, existing = existing_signatures(client, ref, digest)
    found = split_signatures(existing, key, digest)
    pins = _plan_pins_of(client, ref, data, media_type)
    optional = cosign.trust_optional(pins, next_version(found.ours))
    sent = put_signature(client, ref, digest, key, found, optional)
    return PushResult(str(ref), digest, len(data), cosign.signature_tag(digest), True, sent)


def _plan_pins_of(client: RegistryClient, ref: Ref, data: bytes, media_type: str) -> dict[str, str]:
    """The pins of a published plan (its plan layer), or none for anything else."""
    if is_index_media_type(media_type):
        return {}
    manifest = Manifest.from_bytes(data, what=str(ref))
    layer = next((d for d in manifest.layers if d.media_type == MEDIA_PLAN), None)
    if layer is None:
        return {}
    text = client.get_blob(ref, layer.digest).decode("utf-8", errors="replace")
    try:
        return plan_pins(client, text, str(ref))
    except CloudbootError as exc:  # not a valid plan: sign it as an opaque artifact
        log.warning("plan does not parse; signed without pins", ref=str(ref), error=str(exc))
        return {}


def verify_ref(client: RegistryClient, ref: Ref, public_key: cosign.PublicKey) -> PushResult:
    """Check ``ref`` carries a valid signature by ``public_key``; raises a SigningError if not."""
    digest = resolve_digest(client, ref)
    manifest, pairs = existing_signatures(client, ref, digest)
    if manifest is None:
        raise cosign.NoSignatureError(
            f"no signature for {digest} (tag {cosign.signature_tag(digest)} not found)",
            where=ref.name,
        )
    cosign.check_signatures(public_key, digest, pairs)
    return PushResult(str(ref), digest, 0, cosign.signature_tag(digest), False, 0)
