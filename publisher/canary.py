"""Canary publishing: a changed plan goes to a staging tag, must pass a gate, then moves.

A bad plan is a fleet that does not boot, so ``publish`` can hold each changed plan at a
staging tag (``canary-<digest prefix>`` in the plan's own repository: its blobs, manifest
and signature already uploaded and signed) until a gate says its target came up. Only
then does the production tag move, with the one manifest PUT ``publisher.push.commit``
does; a plan that fails its gate, or whose gate did not finish before the run's deadline,
leaves production exactly where it was and is reported ``held`` with the gate's verdict.

The gate is a callable, not a VM: booting needs QEMU and firmware, which live on the
watcher side (docs/ARCHITECTURE.md: watcher -> publisher -> guest), so the watcher
passes its boot-based gate in. Gates run in parallel up to ``CanaryPolicy.parallel``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from guest.contract.oci import parse_ref
from publisher.push import PreparedPush, PushResult, commit
from publisher.registry import RegistryClient

log = structlog.get_logger(__name__)

STAGING_PREFIX = "canary-"


@dataclass(frozen=True)
class CanaryRequest:
    """One staged plan for a gate to try: ``staged`` is a tag pinned to ``digest``."""

    plan: Path
    ref: str  # production
    staged: str  # registry/repo:canary-...@sha256:...
    digest: str


@dataclass(frozen=True)
class CanaryResult:
    passed: bool
    result: str  # a short verdict: "booted", "kernel panic", "deadline", ...
    stopped_at: str | None = None  # the last milestone reached (where a boot stopped)
    tail: str = ""  # the last lines of the serial log
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: The gate: try the staged plan before ``deadline`` (``time.monotonic()`` seconds).
Gate = Callable[[CanaryRequest, float], CanaryResult]


@dataclass(frozen=True)
class CanaryPolicy:
    gate: Gate
    parallel: int = 2
    deadline_s: float = 1800.0


def staging_tag(digest: str) -> str:
    """Per content, so two runs (or plans) never stage over each other."""
    return STAGING_PREFIX + digest.removeprefix("sha256:")[:16]


class CanaryRun:
    """The gates of one publish run: a parallel limit and one deadline for them all."""

    def __init__(self, policy: CanaryPolicy) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + policy.deadline_s
        self._slots = threading.BoundedSemaphore(max(1, policy.parallel))

    def judge(self, request: CanaryRequest) -> CanaryResult:
        """The gate's verdict; a gate that raises or runs out of time holds the plan."""
        with self._slots:
            start = time.monotonic()
            if start >= self.deadline:
                return CanaryResult(False, "deadline", "not started: the run's deadline passed")
            log.info("canary", plan=str(request.plan), staged=request.staged)
            try:
                result = self.policy.gate(request, self.deadline)
            except Exception as exc:  # a broken gate holds the plan; it never moves it
                log.error("canary gate failed", plan=str(request.plan), error=str(exc))
                result = CanaryResult(False, f"gate error: {exc}")
            took = time.monotonic() - start
            if result.passed and time.monotonic() > self.deadline:
                result = CanaryResult(False, "deadline", result.stopped_at, result.tail)
            return CanaryResult(
                result.passed, result.result, result.stopped_at, result.tail, round(took, 1)
            )


def staged_ref(ref: str, digest: str) -> str:
    """``registry/repo:canary-...@digest`` for the production ``ref``'s repository."""
    return str(parse_ref(ref).with_tag(staging_tag(digest)).with_digest(digest))


def gated_commit(
    client: RegistryClient, prepared: PreparedPush, plan: Path, run: CanaryRun
) -> tuple[PushResult | None, CanaryResult | None]:
    """Commit ``prepared`` only after its canary passed; (None, verdict) when it held.

    A plan whose production tag needs no move (unchanged, or re-signed only) has nothing
    to try and commits as usual.
    """
    if not prepared.move_tag:
        return commit(client, prepared), None
    stage = prepared.ref.with_tag(staging_tag(prepared.digest))
    client.put_manifest(stage, prepared.manifest, prepared.media_type, stage.reference)
    request = CanaryRequest(plan, str(prepared.ref), staged_ref(str(prepared.ref), prepared.digest),
                            prepared.digest)  # fmt: skip
    verdict = run.judge(request)
    if not verdict.passed:
        log.warning("canary held the plan", plan=str(plan), result=verdict.result)
        return None, verdict
    return commit(client, prepared), verdict
