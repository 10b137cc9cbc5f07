"""A plan tag's history, as far as the registry can tell it, and rolling back along it.

A registry keeps no log of tag moves. What it does keep, and what the publisher writes,
is enough for a useful history: every digest cloudboot published in a repository has a
signature tag ``sha256-<hex>.sig`` next to it (cosign's scheme, docs/wire-formats.md),
whose payloads carry the freshness version (milliseconds since the epoch at signing,
docs/trust-model.md) and pins, and the manifest carries the git revision and source
annotations (``publisher.annotations``). Ordering the signed digests by their freshest
version gives the publications, newest first. ``BLIND_SPOTS`` says what this cannot see;
the CLI prints it with every history, so nobody reads more into it than is there.

Rollback is a promotion of old content onto the tag (``publisher.promote``): a new
signature above the current one, so the guests' anti-rollback floors accept it and stay
meaningful for everything older.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import MEDIA_PLAN, Manifest, Ref, is_index_media_type
from publisher.annotations import CREATED, REVISION, SOURCE
from publisher.promote import PromoteResult, promote
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from publisher.sigtag import existing_signatures, payloads_for

SIG_TAG = re.compile(r"^(sha256)-([0-9a-f]{64})\.sig$")

#: At most this many signed digests are read per history (untrusted registry: bounded).
MAX_ENTRIES = 500

BLIND_SPOTS = (
    "the registry keeps no log of tag moves: entries are the digests signed in this"
    " repository, newest signature first; when a tag pointed at each one is not recorded",
    "re-signing replaces our older signature of a digest, so only its latest signing time"
    " is visible (a rollback or promotion shows old content as a new entry)",
    "content published unsigned, or whose signature tag was deleted, is not listed",
    "signatures name the repository, not the tag: every tag's publications in this"
    " repository are listed (the tags pointing at each digest now are shown)",
    "the OCI referrers API is not consulted (docker-registry 2.x does not serve it);"
    " cloudboot writes cosign's sha256-<hex>.sig tags",
    "signers are named only for the public keys given (the workspace's cosign.pub);"
    " any other valid-looking payload is listed as by an unknown key",
)


@dataclass(frozen=True)
class Signer:
    key: str  # a name from the keys given, or "unknown"
    version: int | None
    signed_at: str | None  # the version as UTC time
    pins: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Publication:
    digest: str
    tags: tuple[str, ...]  # tags of the repository pointing here now
    kind: str  # plan | index | manifest
    revision: str | None
    source: str | None
    created: str | None
    signers: tuple[Signer, ...]

    @property
    def version(self) -> int:
        return max((s.version or 0 for s in self.signers), default=0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "version": self.version}


@dataclass(frozen=True)
class History:
    ref: str
    current: str | None  # the digest the tag points at now
    entries: tuple[Publication, ...]
    truncated: bool
    blind_spots: tuple[str, ...] = BLIND_SPOTS

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["entries"] = [e.to_json() for e in self.entries]
        return doc

    def position(self, digest: str) -> int | None:
        return next((i for i, e in enumerate(self.entries) if e.digest == digest), None)


def as_time(version: int | None) -> str | None:
    if not version:
        return None
    when = datetime.datetime.fromtimestamp(version / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _signers(
    pairs: list[tuple[bytes, str]], digest: str, keys: Mapping[str, cosign.PublicKey]
) -> tuple[Signer, ...]:
    out = []
    for signed, data, sig in payloads_for(pairs, digest):  # others vouch for nothing here
        name = next((n for n, k in keys.items() if cosign.verify_signature(k, data, sig)), None)
        out.append(Signer(name or "unknown", signed.version, as_time(signed.version), signed.pins))
    return tuple(sorted(out, key=lambda s: -(s.version or 0)))


def _publication(
    client: RegistryClient,
    ref: Ref,
    digest: str,
    tags: tuple[str, ...],
    keys: Mapping[str, cosign.PublicKey],
) -> Publication | None:
    found = client.find_manifest(ref.with_digest(digest))
    if found is None:
        return None  # signed, then deleted: nothing left to roll back to
    data, media_type, _ = found
    kind, notes = "index", {}
    if not is_index_media_type(media_type):
        manifest = Manifest.from_bytes(data, what=f"{ref.name}@{digest}")
        notes = dict(manifest.annotations or {})
        kind = "plan" if any(d.media_type == MEDIA_PLAN for d in manifest.layers) else "manifest"
    _, pairs = existing_signatures(client, ref, digest)
    return Publication(
        digest,
        tags,
        kind,
        notes.get(REVISION),
        notes.get(SOURCE),
        notes.get(CREATED),
        _signers(pairs, digest, keys),
    )


def plan_history(client: RegistryClient, ref: Ref, keys: Mapping[str, cosign.PublicKey]) -> History:
    """The publications of ``ref``'s repository, newest signature first."""
    info = client.head_manifest(ref)
    current = info.digest if info else None
    all_tags = client.list_tags(ref)
    signed = [f"{m[1]}:{m[2]}" for t in all_tags if (m := SIG_TAG.match(t))]
    truncated = len(signed) > MAX_ENTRIES
    if current and current not in signed:
        signed.append(current)  # an unsigned current tag still belongs in its history
    plain = [t for t in all_tags if not SIG_TAG.match(t)][:MAX_ENTRIES]
    pool = client.pool()
    heads = [(t, pool.submit(client.head_manifest, ref.with_tag(t))) for t in plain]
    pointing: dict[str, list[str]] = {}
    for tag, future in heads:
        head = future.result()
        if head is not None:
            pointing.setdefault(head.digest, []).append(tag)
    futures = [
        pool.submit(_publication, client, ref, d, tuple(sorted(pointing.get(d, []))), keys)
        for d in signed[-MAX_ENTRIES:]
    ]
    entries = [p for f in futures if (p := f.result()) is not None]
    entries.sort(key=lambda p: (p.version, p.digest == current), reverse=True)
    return History(str(ref), current, tuple(entries), truncated)


def rollback_target(history: History, to: str) -> str:
    """The digest ``--to`` names: a digest, or ``-N`` (N publications before the current)."""
    if to.startswith("sha256:"):
        if history.position(to) is None:
            raise CloudbootError(
                f"{to} is not a signed publication in this repository"
                " (see `cloudboot plan history`)",
                where=history.ref,
            )
        return to
    try:
        steps = -int(to)
    except ValueError:
        steps = 0
    if steps < 1:
        raise CloudbootError(f"--to {to!r}: expected a digest (sha256:...) or -N (N >= 1)")
    start = history.position(history.current) if history.current else None
    if start is None:
        raise CloudbootError(
            "the tag points at no signed publication to count from", where=history.ref
        )
    index = start + steps
    if index >= len(history.entries):
        raise CloudbootError(
            f"--to {to}: only {len(history.entries) - start - 1} publication(s) before the"
            " current one",
            where=history.ref,
        )
    return history.entries[index].digest


def rollback(
    client: RegistryClient, ref: Ref, to: str, key: SigningKey, history: History
) -> PromoteResult:
    """Move ``ref``'s tag back to old content with a new, fresher signature."""
    digest = rollback_target(history, to)
    return promote(client, ref.with_digest(digest), ref, key)
