"""What a plan's signature vouches for besides the plan: pinned digests and freshness.

A plan names kernels by tag (``reg/linux:6.6``); the plan's own signature covers the
plan's bytes, not what the tag points at. At publish time each tag the plan names, for
every arch the plan can boot on, is resolved here and its digest goes into the signed
``optional`` section of the cosign payload (docs/trust-model.md), with a freshness
version. The plan's bytes stay the user's: upstream guests still read the plan, and
cosign still verifies the signature.

Tags that cannot be resolved now (a registry the host cannot reach, a tag not pushed
yet, a ref that depends on ``meta.*`` or LLDP at boot) stay unpinned and are logged, once
per plan with the refs grouped by why (the example plans name ten tags on a registry that
does not exist: one warning, not ten); a guest under ``cloudboot.cosign=enforce`` then
boots such an artifact only if it carries its own signature by the same key.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future

import requests
import structlog

from guest.contract import cosign
from guest.contract.arch import BOOTABLE_PLAN_ARCHES
from guest.contract.errors import CloudbootError
from guest.contract.oci import Ref, parse_ref
from guest.contract.plan import OciSource, evaluate_collecting, parse_plan, plan_text
from publisher.registry import RegistryClient
from publisher.retry import RetryPolicy

log = structlog.get_logger(__name__)

#: Addresses under which a guest reaches the host's own loopback registry: QEMU's
#: user-mode network maps 10.0.2.2 to the host's 127.0.0.1.
GUEST_HOST_ALIASES = ("10.0.2.2",)

#: A pin lookup is one GET without retries: an unreachable registry named in a plan must
#: not hold a publish for the whole retry budget.
RESOLVE_TIMEOUT = 10.0


def plan_refs(text: str, source: str) -> list[Ref]:
    """Every tagged OCI ref a target names (index, kernel, initrd, modules), all arches.

    Subplans are not here: a subplan is a plan, published and signed on its own. Refs
    with a digest need no pin (the signed plan bytes carry it).
    """
    plan = parse_plan(text, source)
    found: dict[str, Ref] = {}
    for arch in BOOTABLE_PLAN_ARCHES:
        evaluated, _errors = evaluate_collecting(plan, arch)  # validated before this
        for target in evaluated.targets:
            if not isinstance(target.source, OciSource):
                continue
            src = target.source
            for text_ref in (src.index, src.kernel, src.initrd, src.modules):
                if not text_ref:
                    continue
                try:
                    ref = parse_ref(text_ref)
                except CloudbootError:
                    continue
                if not ref.digest:
                    found.setdefault(str(ref), ref)
    return [found[k] for k in sorted(found)]


def pin_refs(data: bytes, source: str) -> tuple[str, ...]:
    """``plan_refs`` of plan bytes, as the strings the signature's pins are keyed by.

    This is the one parse of a plan's text for its pins; ``publisher.fleet`` remembers
    the answer by the bytes' hash, so an unchanged plan is never parsed for it again.
    """
    return tuple(str(ref) for ref in plan_refs(plan_text(data, source), source))


def host_view(ref: Ref) -> Ref:
    """The ref as this host reaches it (``10.0.2.2:5000`` is ``127.0.0.1:5000`` here)."""
    host, sep, port = ref.registry.partition(":")
    if host in GUEST_HOST_ALIASES:
        return dataclasses.replace(ref, registry=f"127.0.0.1{sep}{port}")
    return ref


#: A tag lookup's answer: the digest, or why there is none.
Lookup = tuple[str | None, str | None]


def resolve_tag(client: RegistryClient, ref: Ref) -> Lookup:
    """The digest ``ref``'s tag points at now (hashed here, not a header), or why not."""
    try:
        found = client.find_manifest(host_view(ref))
    except (CloudbootError, requests.RequestException) as exc:
        return None, f"cannot resolve it: {exc}"
    if found is None:
        return None, "no such manifest yet"
    return found[2], None


class TagLookups:
    """Where each named tag points, asked once per publish run however many plans name it.

    A fleet's plans mostly boot the same few kernels: a thousand plans naming one tag
    cost one lookup, not a thousand. Live for one run only (a ``cloudboot publish``), so
    a tag moved since is seen by the next run; the watcher resolves afresh on every edit.
    """

    def __init__(self) -> None:
        self._found: dict[str, Future[Lookup]] = {}
        self._lock = threading.Lock()

    def lookup(self, client: RegistryClient, ref_text: str) -> Future[Lookup]:
        """The (shared) lookup of ``ref_text``, started on ``client``'s pool if new."""
        with self._lock:
            known = self._found.get(ref_text)
            if known is not None:
                return known
            once = dataclasses.replace(
                client, retry=RetryPolicy(total=0.0), timeout=RESOLVE_TIMEOUT
            )
            future = client.pool().submit(_resolve_text, once, ref_text)
            self._found[ref_text] = future
            return future


def _resolve_text(client: RegistryClient, ref_text: str) -> Lookup:
    try:
        ref = parse_ref(ref_text)
    except CloudbootError as exc:  # a remembered ref that no longer parses: no pin
        return None, f"not a ref: {exc}"
    return resolve_tag(client, ref)


def resolve_pins(
    client: RegistryClient,
    refs: Iterable[Ref | str],
    lookups: TagLookups | None = None,
    plan: str = "",
) -> dict[str, str]:
    """``{ref as the plan names it: digest}`` for every ref that resolves (in parallel).

    One attempt each, on a client sharing ``client``'s session and credentials; with
    ``lookups``, a tag another plan of the run already asked about is not asked again.
    The refs that do not resolve are one warning for the ``plan``, grouped by why.
    """
    wanted = [str(ref) for ref in refs]
    if not wanted:
        return {}
    runs = lookups or TagLookups()
    answers = [(ref, runs.lookup(client, ref).result()) for ref in wanted]
    pins = {ref: digest for ref, (digest, _) in answers if digest is not None}
    if pins:
        log.info("tags pinned in the signature", plan=plan, pins=pins)
    missed: dict[str, list[str]] = {}
    for ref, (digest, why) in answers:
        if digest is None:
            missed.setdefault(why or "unknown", []).append(ref)
    if missed:
        log.warning(
            "tags not pinned: a guest under cloudboot.cosign=enforce boots them only"
            " with their own signature", plan=plan, count=sum(map(len, missed.values())),
            why=missed,
        )  # fmt: skip
    return pins


def plan_pins(client: RegistryClient, text: str, source: str) -> dict[str, str]:
    return resolve_pins(client, plan_refs(text, source), plan=source)


def next_version(existing: Iterable[cosign.SignedPayload], now_ms: int | None = None) -> int:
    """A freshness version newer than every one already signed for this content.

    Milliseconds since the epoch: monotonic across publishers with roughly right clocks,
    and strictly above what was signed before even when a clock lags.
    """
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return max([now, *((s.version or 0) + 1 for s in existing)])
