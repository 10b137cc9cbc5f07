"""The signature tag of one digest (``sha256-<hex>.sig``): read, judge, replace.

cosign keeps every signature of a manifest in one signature manifest. Publishing reads
it, splits ours (valid under our key, for this digest) from everyone else's, decides
whether a new signature is due (docs/trust-model.md: new pins, a tag move, no version)
and writes one new signature of ours next to the foreign ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import Manifest, Ref
from publisher.registry import Blob, RegistryClient
from publisher.signing import SigningKey, sign_blob, verify_own

log = structlog.get_logger(__name__)


def existing_signatures(
    client: RegistryClient, ref: Ref, digest: str
) -> tuple[Manifest | None, list[tuple[bytes, str]]]:
    """The signature manifest at ``sha256-<hex>.sig`` (if any) and its (payload, sig) pairs."""
    sig_ref = ref.with_tag(cosign.signature_tag(digest))
    found = client.find_manifest(sig_ref)  # one GET: a HEAD first would add a round trip
    if found is None:
        return None, []
    manifest = Manifest.from_bytes(found[0], what=str(sig_ref))
    pairs = [
        (client.get_blob(ref, layer.descriptor.digest), layer.signature_b64)
        for layer in cosign.signature_layers(manifest)
    ]
    return manifest, pairs


def payloads_for(
    pairs: Sequence[tuple[bytes, str]], digest: str
) -> list[tuple[cosign.SignedPayload, bytes, str]]:
    """The pairs whose payload parses and speaks about ``digest`` (signatures unchecked):
    (parsed, payload bytes, signature) for callers that check keys themselves or have none.
    """
    out = []
    for data, sig in pairs:
        try:
            signed = cosign.parse_payload(data)
        except CloudbootError:
            continue
        if signed.manifest_digest == digest:
            out.append((signed, data, sig))
    return out


@dataclass(frozen=True)
class Signatures:
    """What the signature tag of one digest holds, split by whether ``key`` made it."""

    ours: tuple[cosign.SignedPayload, ...]  # valid, by our key, for this digest
    foreign: tuple[tuple[bytes, str], ...]  # everything else, kept as found
    #: False: ``ours`` came from ``publisher.sigmemory`` and ``foreign`` was not read, so
    #: this is enough to decide whether to sign, not to write a replacement.
    complete: bool = True

    @property
    def freshest(self) -> cosign.SignedPayload | None:
        return max(self.ours, key=lambda s: s.version or 0, default=None)


def split_signatures(
    pairs: Sequence[tuple[bytes, str]], key: SigningKey, digest: str
) -> Signatures:
    ours, foreign = [], []
    for data, sig in pairs:
        if not verify_own(key, data, sig):
            foreign.append((data, sig))
            continue
        try:
            cosign.verify_payload(data, digest)
        except CloudbootError:
            continue  # our key, another digest: stale junk, not carried over
        ours.append(cosign.parse_payload(data))
    return Signatures(tuple(ours), tuple(foreign))


def needs_signature(found: Signatures, pins: Mapping[str, str], moving: bool) -> bool:
    """Sign again unless our freshest signature already says exactly this.

    A tag moving to this digest is a new publication (a revert to old plan bytes
    included), so it gets a new freshness version; new pins for unchanged bytes too.
    """
    current = found.freshest
    return current is None or moving or current.pins != dict(pins) or current.version is None


def put_signature(
    client: RegistryClient,
    ref: Ref,
    digest: str,
    key: SigningKey,
    found: Signatures,
    optional: Mapping[str, object],
) -> int:
    """Replace our signatures at the signature tag by one new one; returns bytes sent.

    Signatures by other keys stay; ours are superseded (the guest takes the freshest
    valid one anyway, so an old one left behind would only be dead weight).
    """
    data = cosign.payload(ref.name, digest, optional)
    pairs = [*found.foreign, (data, sign_blob(key, data))]
    manifest, config = cosign.signature_manifest(pairs)
    sent = sum(client.push_blob(ref, Blob.of_bytes(blob)) for blob in (data, config))
    tag = cosign.signature_tag(digest)
    client.put_manifest(ref, bytes(manifest), manifest.media_type, tag)
    log.debug("signed", ref=ref.name, digest=digest, signature_tag=tag)
    return sent


def speculative_signature_blobs(
    ref: Ref, digest: str, pins: Mapping[str, str], version: int
) -> list[Blob]:
    """The payload and the signature-manifest config for a first signature of ``digest``.

    Both are known before the existing signatures are (the ECDSA signature lives in an
    annotation, not in a blob), so they are uploaded alongside the artifact's own blobs.
    """
    data = cosign.payload(ref.name, digest, cosign.trust_optional(pins, version))
    _, config = cosign.signature_manifest([(data, "")])
    return [Blob.of_bytes(data), Blob.of_bytes(config)]


def tag_version(client: RegistryClient, ref: Ref, digest: str, key: SigningKey) -> int:
    """The highest freshness version our key signed for ``digest`` (0 if none)."""
    _, pairs = existing_signatures(client, ref, digest)
    found = split_signatures(pairs, key, digest)
    return max((s.version or 0 for s in found.ours), default=0)
