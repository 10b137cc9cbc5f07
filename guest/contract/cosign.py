"""cosign v2 keyed "simple signing": payloads, signature tags and manifests
(docs/wire-formats.md §3).

Pure: the publisher builds signatures with it and the guest checks them with it, so both
sides agree byte for byte on the payload cosign itself would produce and on where the
signature lives (``sha256-<hex>.sig`` in the same repository).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from guest.contract.errors import CloudbootError, FormatError
from guest.contract.oci import (
    MEDIA_COSIGN_SIMPLESIGNING,
    MEDIA_OCI_CONFIG,
    Descriptor,
    Manifest,
    canonical_json,
    check_digest,
    digest_of,
)
from guest.contract.pubkey import PublicKey, load_public_key

__all__ = [
    "ANNOTATION_SIGNATURE",
    "OPTIONAL_PINS",
    "OPTIONAL_VERSION",
    "PAYLOAD_TYPE",
    "BadSignatureError",
    "DigestMismatchError",
    "NoSignatureError",
    "PublicKey",
    "SignatureLayer",
    "SignedPayload",
    "SigningError",
    "check_signatures",
    "load_public_key",
    "parse_payload",
    "payload",
    "signature_layers",
    "signature_manifest",
    "signature_tag",
    "trust_optional",
    "verify_payload",
    "verify_signature",
]

ANNOTATION_SIGNATURE = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"


class SigningError(CloudbootError):
    """Base of every signature problem; ``exit_code`` 1 so ``verify`` exits 1."""


class NoSignatureError(SigningError):
    pass


class BadSignatureError(SigningError):
    pass


class DigestMismatchError(SigningError):
    pass


def signature_tag(digest: str) -> str:
    """Where cosign keeps the signatures of ``sha256:<hex>``: tag ``sha256-<hex>.sig``."""
    algorithm, hexpart = check_digest(digest).split(":", 1)
    return f"{algorithm}-{hexpart}.sig"


#: Keys of our signed ``optional`` section (docs/trust-model.md): the digest each tag
#: the plan names had when it was published, and the publication's freshness version.
OPTIONAL_PINS = "dev.cloudboot.pins"
OPTIONAL_VERSION = "dev.cloudboot.version"


def payload(
    docker_reference: str,
    manifest_digest: str,
    optional: Mapping[str, object] | None = None,
) -> bytes:
    """The simple-signing payload exactly as cosign serialises it (Go struct order, compact).

    ``optional`` is cosign's free-form, signed annotations object (``null`` when empty, as
    cosign writes it); cosign and upstream guests ignore keys they do not know.
    """
    return canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": check_digest(manifest_digest)},
                "type": PAYLOAD_TYPE,
            },
            "optional": dict(optional) if optional else None,
        }
    )


def trust_optional(pins: Mapping[str, str], version: int) -> dict[str, object]:
    """Our ``optional`` section: ``pins`` (ref as the plan names it -> digest) and version."""
    return {
        OPTIONAL_PINS: {ref: check_digest(d) for ref, d in sorted(pins.items())},
        OPTIONAL_VERSION: version,
    }


@dataclass(frozen=True)
class SignedPayload:
    """The fields of a cosign simple-signing payload that the guest checks."""

    docker_reference: str
    manifest_digest: str
    optional: dict[str, object] | None

    @property
    def pins(self) -> dict[str, str]:
        """The signed tag -> digest pins; malformed entries are dropped (not trusted)."""
        raw = (self.optional or {}).get(OPTIONAL_PINS)
        if not isinstance(raw, dict):
            return {}
        pins = {}
        for ref, digest in raw.items():
            if isinstance(ref, str) and isinstance(digest, str):
                try:
                    pins[ref] = check_digest(digest)
                except FormatError:
                    continue
        return pins

    @property
    def version(self) -> int | None:
        """The publication's freshness version (milliseconds since the epoch), if signed."""
        raw = (self.optional or {}).get(OPTIONAL_VERSION)
        return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def parse_payload(data: bytes) -> SignedPayload:
    """Read a simple-signing payload, refusing anything that is not one."""
    what = "signature payload"
    try:
        obj = json.loads(data)
        critical = obj["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not JSON: {exc}", what=what) from None
    except (KeyError, TypeError) as exc:
        raise FormatError(f"missing field {exc}", what=what) from None
    if kind != PAYLOAD_TYPE:
        raise FormatError(f"type {kind!r} is not {PAYLOAD_TYPE!r}", what=what)
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise FormatError("digest and docker-reference must be strings", what=what)
    optional = obj.get("optional")
    return SignedPayload(reference, digest, optional if isinstance(optional, dict) else None)


def verify_payload(data: bytes, expected_digest: str, docker_reference: str | None = None) -> None:
    """Check that a (signature-verified) payload speaks about ``expected_digest``.

    A valid signature over a payload for some *other* manifest proves nothing about this
    one, so this check is as essential as the signature itself.
    """
    signed = parse_payload(data)
    if signed.manifest_digest != expected_digest:
        raise DigestMismatchError(
            f"signature payload is for {signed.manifest_digest}, not {expected_digest}"
        )
    if docker_reference is not None and signed.docker_reference != docker_reference:
        raise DigestMismatchError(
            f"signature payload names {signed.docker_reference!r}, not {docker_reference!r}"
        )


def verify_signature(public_key: PublicKey, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` (standard base64) is a valid signature of ``data``."""
    try:
        raw = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return public_key.verify(data, raw)


@dataclass(frozen=True)
class SignatureLayer:
    """One signature in a signature manifest: the payload's descriptor and its signature."""

    descriptor: Descriptor
    signature_b64: str


def signature_layers(manifest: Manifest) -> list[SignatureLayer]:
    """The simple-signing layers of a signature manifest, in order."""
    found = []
    for layer in manifest.layers:
        if layer.media_type != MEDIA_COSIGN_SIMPLESIGNING:
            continue
        sig = (layer.annotations or {}).get(ANNOTATION_SIGNATURE)
        if sig:
            found.append(SignatureLayer(layer, sig))
    return found


def check_signatures(
    public_key: PublicKey,
    manifest_digest: str,
    candidates: Iterable[tuple[bytes, str]],
    docker_reference: str | None = None,
) -> SignedPayload:
    """Accept when any (payload, signature) pair is valid for ``manifest_digest``.

    Of several valid ones the freshest (highest signed version) wins: a re-publication
    adds a newer signature with new pins, and the older one must not shadow it. Raises
    ``NoSignatureError`` when there are no candidates, ``DigestMismatchError`` when
    the only valid signatures speak about another digest, else ``BadSignatureError``.
    """
    seen = mismatched = 0
    valid: list[SignedPayload] = []
    for data, sig in candidates:
        seen += 1
        if not verify_signature(public_key, data, sig):
            continue
        try:
            verify_payload(data, manifest_digest, docker_reference)
        except (DigestMismatchError, FormatError):
            mismatched += 1
            continue
        valid.append(parse_payload(data))
    if valid:
        return max(valid, key=lambda signed: signed.version or 0)
    if not seen:
        raise NoSignatureError(f"no signature for {manifest_digest}")
    if mismatched:
        raise DigestMismatchError(
            f"{mismatched} valid signature(s) sign another digest or identity,"
            f" none {manifest_digest}"
        )
    raise BadSignatureError(
        f"none of {seen} signature(s) of {manifest_digest} verifies with the"
        f" {public_key.algorithm} public key"
    )


def signature_manifest(
    layers: Sequence[tuple[bytes, str]],
) -> tuple[Manifest, bytes]:
    """A cosign signature manifest holding ``(payload, signature_b64)`` layers.

    The config mirrors what cosign writes (an image config whose rootfs lists the layers);
    cosign verify reads only the layers, but a registry UI showing it should not choke.
    """
    descriptors = tuple(
        Descriptor.for_bytes(MEDIA_COSIGN_SIMPLESIGNING, data, {ANNOTATION_SIGNATURE: sig})
        for data, sig in layers
    )
    config = canonical_json(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in descriptors],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [d.digest for d in descriptors]},
            "config": {},
        }
    )
    manifest = Manifest(
        config=Descriptor(MEDIA_OCI_CONFIG, digest_of(config), len(config)), layers=descriptors
    )
    return manifest, config
