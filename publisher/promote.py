"""``cloudboot promote SRC DST``: move a tag to exactly what another ref points at.

Promotion publishes nothing new: the manifest bytes (and so the digest) at SRC are the
ones DST ends up at, in the order of docs/wire-formats.md §2.7 (blobs, manifest by
digest, signature, then the tag). Blobs reach DST's repository by a cross-repository
mount on the same registry (no bytes uploaded) and are copied only between registries.

The trust chain decides what "signatures carried or re-signed" may mean
(docs/trust-model.md):

- A guest checks that a signature names the plan's repository, so a signature made for
  SRC's repository proves nothing in another one: promoting across repositories signs
  anew, which needs the key.
- A guest keeps a freshness floor per tag, so the signature DST ends up with must be
  newer than the one of what DST holds now, or every guest that booted DST's current
  plan refuses the promoted one. With the key, a new signature is made above both; without
  it, the existing signature is carried only when it is already fresher, else refused.
- With the key, SRC must carry a valid signature by that key: promotion vouches for what
  was published and tested, it does not launder unsigned content. The new signature
  carries SRC's pins (the kernels that were tested), not the tags' digests of today.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import structlog

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import Index, Manifest, Ref, is_index_media_type
from publisher.pins import next_version
from publisher.registry import Blob, RegistryClient
from publisher.signing import SigningKey
from publisher.sigtag import (
    Signatures,
    existing_signatures,
    payloads_for,
    put_signature,
    split_signatures,
    tag_version,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PromoteResult:
    source: str
    ref: str
    digest: str
    previous: str | None  # what DST pointed at before (None: no such tag)
    moved: bool
    signature: str  # re-signed | carried | unchanged
    version: int | None  # the freshness version DST's digest is signed with now
    mounted: int = 0  # blobs made present by a cross-repository mount (no upload)
    copied_bytes: int = 0  # blob bytes uploaded (only between registries)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _same_repo(a: Ref, b: Ref) -> bool:
    return (a.registry, a.repository) == (b.registry, b.repository)


def _copy_manifest(
    client: RegistryClient,
    target_client: RegistryClient,
    src: Ref,
    dst: Ref,
    found: tuple[bytes, str, str],
) -> tuple[int, int]:
    """Make the manifest ``found`` = (bytes, type, digest) at ``src`` exist in DST's repo.

    Returns (blobs mounted, bytes copied). Index entries come first, so the index is never
    in the repository before what it points at.
    """
    data, media_type, digest = found
    mounted = copied = 0
    if is_index_media_type(media_type):
        for entry in Index.from_bytes(data, what=str(src)).manifests:
            child = client.get_manifest(src.with_digest(entry.digest))
            m, c = _copy_manifest(client, target_client, src, dst, child)
            mounted, copied = mounted + m, copied + c
    else:
        manifest = Manifest.from_bytes(data, what=str(src))
        for desc in (manifest.config, *manifest.layers):
            if src.registry == dst.registry and target_client.mount_blob(
                dst, desc.digest, src.repository
            ):
                mounted += 1
                continue
            blob = Blob.of_bytes(client.get_blob(src.with_digest(digest), desc.digest))
            copied += target_client.push_blob(dst, blob)
    target_client.put_manifest(dst.with_digest(digest), data, media_type, digest)
    return mounted, copied


def _versions(client: RegistryClient, ref: Ref, digest: str) -> int:
    """The highest version any parsable payload for ``digest`` claims (unverified: keyless)."""
    _, pairs = existing_signatures(client, ref, digest)
    return max((s.version or 0 for s, _, _ in payloads_for(pairs, digest)), default=0)


def promote(
    client: RegistryClient,
    src: Ref,
    dst: Ref,
    key: SigningKey | None,
    target_client: RegistryClient | None = None,
) -> PromoteResult:
    """Move DST's tag to SRC's digest (see the module docstring for the signature rules)."""
    tag = dst.tag
    if dst.digest or not tag:
        raise CloudbootError(
            "the destination must be a tag (REPO:TAG), not a digest", where=str(dst)
        )
    to = target_client or client
    found = client.get_manifest(src)
    data, media_type, digest = found
    info = to.head_manifest(dst)
    previous = info.digest if info else None
    if previous == digest:
        log.info("already promoted", ref=str(dst), digest=digest)
        return PromoteResult(str(src), str(dst), digest, previous, False, "unchanged", None)
    src_ours = None
    if key is not None:
        src_ours = split_signatures(existing_signatures(client, src, digest)[1], key, digest)
    if src_ours is not None and not src_ours.ours:
        raise CloudbootError(
            f"{digest} carries no valid signature by {key.source if key else 'the key'}:"
            " promote moves only signed publications (publish or `cloudboot sign` it first)",
            where=str(src),
        )
    mounted = copied = 0
    if not _same_repo(src, dst):
        mounted, copied = _copy_manifest(client, to, src, dst, found)
    if key is not None and src_ours is not None:
        version = _resign(to, dst, digest, key, previous, src_ours)
        how = "re-signed"
    else:
        version = _carry(to, src, dst, digest, previous)
        how = "carried"
    to.put_manifest(dst, data, media_type, tag)
    log.info("promoted", source=str(src), ref=str(dst), digest=digest, previous=previous)
    return PromoteResult(str(src), str(dst), digest, previous, True, how, version, mounted, copied)


def _resign(
    client: RegistryClient,
    dst: Ref,
    digest: str,
    key: SigningKey,
    previous: str | None,
    src_ours: Signatures,
) -> int:
    """A new signature at DST above every version of ours for the digest and DST's current."""
    _, pairs = existing_signatures(client, dst, digest)
    found = split_signatures(pairs, key, digest)
    floor = tag_version(client, dst, previous, key) + 1 if previous else 0
    version = max(next_version([*found.ours, *src_ours.ours]), floor)
    pins = src_ours.freshest.pins if src_ours.freshest else {}
    put_signature(client, dst, digest, key, found, cosign.trust_optional(pins, version))
    return version


def _carry(client: RegistryClient, src: Ref, dst: Ref, digest: str, previous: str | None) -> int:
    """Keep the signature already there, if a guest at DST would take it (or refuse)."""
    if not _same_repo(src, dst):
        raise CloudbootError(
            "promoting into another repository needs the signing key (--key or"
            " [signing].key): a guest checks that the signature names the plan's repository",
            where=str(dst),
        )
    version = _versions(client, dst, digest)
    if version == 0:
        raise CloudbootError(f"{digest} is not signed: nothing to carry", where=str(src))
    held = _versions(client, dst, previous) if previous else 0
    if version <= held:
        raise CloudbootError(
            f"the signature of {digest} (version {version}) is not fresher than the one of"
            f" {previous} (version {held}) that {dst} holds: guests would refuse it as a"
            " rollback; promote with the key to sign it anew",
            where=str(dst),
        )
    return version
