"""Publishing a workspace's plans: ``cloudboot publish`` (CI) and the watcher's plan stage.

One ``PlanPublisher`` (pooled connections, cached tokens, one decrypted signing key) lives
for a whole ``cloudboot publish`` or watcher, so a plan edit costs a validation and a few
HTTP requests, not a process start, a key derivation and a TLS handshake.

For the watcher those requests mostly run ahead of time: as soon as an edit has settled
(well inside the debounce window) ``prepare`` validates, uploads and signs the new bytes,
and when the window closes ``publish`` only moves the tag, provided the file still holds
those bytes.

``cloudboot publish`` validates every plan before it publishes any, so a bad commit
publishes nothing; each plan is validated once (publishing takes the checked bytes).
Publishing is idempotent: manifests are canonical and carry no wall-clock time, and the
revision annotation is the last commit that touched *that plan file* (see
``publisher.annotations``), so a commit that leaves a plan alone leaves its manifest,
digest and tag alone too.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.oci import parse_ref
from guest.contract.plan import PlanError, read_plan_bytes
from publisher.annotations import fleet_annotations
from publisher.canary import CanaryPolicy, CanaryResult, CanaryRun, gated_commit
from publisher.config import PLAN_SUFFIX, Config
from publisher.fleet import (
    PlanMemory,
    check_plans,
    publish_concurrently,
    stale_tags,
    validator_fingerprint,
    with_pin_refs,
    workspace_memory,
)
from publisher.ignore import IgnoreRules
from publisher.pins import TagLookups
from publisher.plancheck import CheckedPlan, InvalidPlanError, check_plan
from publisher.planrefs import check_plan_refs
from publisher.progress import NoProgress, Progress
from publisher.push import PreparedPush, PushResult, commit, prepare_plan as prepare_checked
from publisher.registry import RegistryClient, client_from_config
from publisher.sigmemory import MEMORY_NAME, SignatureMemory
from publisher.signing import SigningKey, load_key_file

log = structlog.get_logger(__name__)

Annotations = Callable[[Path], Mapping[str, str]]


def load_signing_key(config: Config) -> SigningKey:
    """The key named by ``[signing].key`` (decrypted once per process)."""
    path = config.signing.key
    if not path.is_file():
        raise CloudbootError(
            f"[signing].key: no signing key at {path} (create one with `cloudboot key generate`)",
            where=config.where,
        )
    return load_key_file(path)


def first_error(errors: Sequence[PlanError]) -> CloudbootError:
    """One log line that starts with the first problem's file:line:col, plus a count."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CloudbootError(f"{first.message}{more}", where=first.where)


@dataclass(frozen=True)
class PlanOutcome:
    """What publishing one plan did (the watcher's plan stage outcome)."""

    ref: str
    digest: str
    uploaded: bool  # False when the tag already pointed at this digest, signed
    uploaded_bytes: int = 0
    prepared_ahead: bool = False  # the run only moved the tag (uploads ran in the window)


def _outcome(result: PushResult, ahead: bool) -> PlanOutcome:
    return PlanOutcome(
        result.ref, result.digest, result.uploaded, result.uploaded_bytes, prepared_ahead=ahead
    )


@dataclass(frozen=True)
class _Ahead:
    """A preparation started for one plan's bytes (identified by their sha256)."""

    sha256: str
    future: Future[PreparedPush]


def _in_background(body: Callable[[], PreparedPush], name: str) -> Future[PreparedPush]:
    """Run ``body`` on a daemon thread: a preparation stuck in registry retries must not
    hold up the watcher's exit (what it left behind is untagged, so abandoning it is safe).
    """
    future: Future[PreparedPush] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(body())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class PlanPublisher:
    """Validate, then sign and publish plans to the refs the config maps them to."""

    def __init__(
        self,
        config: Config,
        client: RegistryClient,
        key: SigningKey,
        annotations: Annotations | None = None,
        refs: Mapping[Path, str] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.key = key
        self.annotations = annotations
        self.refs = dict(refs or {})  # plan -> ref, worked out once (``check_plan_refs``)
        self._ahead: dict[Path, _Ahead] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        config: Config,
        annotations: Annotations | None = None,
        refs: Mapping[Path, str] | None = None,
    ) -> PlanPublisher:
        client = client_from_config(config.registry)
        return cls(config, client, load_signing_key(config), annotations, refs)

    def ref_for(self, plan: Path) -> str:
        return self.refs.get(plan) or self.config.plan_ref(plan)

    def prepare(self, plan: Path) -> None:
        """Start publishing the plan's current bytes, all but the tag move, in the background.

        A failure here is not reported: the run that follows redoes the work and reports
        it. Bytes already being prepared are not prepared twice.
        """
        try:
            data = plan.read_bytes()
        except OSError:
            return
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._ahead.get(plan)
            if known is not None and known.sha256 == sha:
                return
            future = _in_background(lambda: self._prepare(plan, data), "cloudboot-ahead")
            self._ahead[plan] = _Ahead(sha, future)
        log.debug("preparing plan ahead of the window", file=str(plan), sha256=sha[:12])

    def publish(self, plan: Path) -> PlanOutcome:
        """Publish the plan's bytes now (reusing a preparation of exactly these bytes)."""
        data = read_plan_bytes(plan)
        prepared = self._prepared(plan, hashlib.sha256(data).hexdigest())
        try:  # the plan is validated (once) before anything is sent
            return self._commit(prepared or self._prepare(plan, data), prepared is not None)
        except InvalidPlanError as exc:
            raise first_error(exc.errors) from None

    def publish_checked(
        self,
        plan: CheckedPlan,
        lookups: TagLookups | None = None,
        seen: SignatureMemory | None = None,
    ) -> PlanOutcome:
        """Publish bytes the caller has already checked (``cloudboot publish``; tag
        ``lookups`` shared by the run's plans, signatures ``seen`` before)."""
        return self._commit(self._prepare_checked(plan, lookups, seen), False)

    def publish_gated(
        self, plan: CheckedPlan, run: CanaryRun
    ) -> tuple[PlanOutcome, CanaryResult | None]:
        """Publish checked bytes once their canary passed (``publisher.canary``)."""
        prepared = self._prepare_checked(plan)
        result, verdict = gated_commit(self.client, prepared, plan.path, run)
        if result is None:  # held: production untouched; the outcome names the staged digest
            return PlanOutcome(str(prepared.ref), prepared.digest, False, prepared.sent), verdict
        return _outcome(result, False), verdict

    def _commit(self, prepared: PreparedPush, ahead: bool) -> PlanOutcome:
        return _outcome(commit(self.client, prepared), ahead)

    def _prepared(self, plan: Path, sha: str) -> PreparedPush | None:
        """The background preparation of exactly these bytes, if one succeeded."""
        with self._lock:
            ahead = self._ahead.pop(plan, None)
        if ahead is None or ahead.sha256 != sha:
            return None
        try:
            return ahead.future.result()
        except CloudbootError as exc:  # redone (and reported) by the caller
            log.debug("plan preparation failed; publishing afresh", file=str(plan), error=str(exc))
            return None

    def _prepare(self, plan: Path, data: bytes) -> PreparedPush:
        return self._prepare_checked(check_plan(data, plan, upstream=self.config.publish.upstream))

    def _prepare_checked(
        self,
        plan: CheckedPlan,
        lookups: TagLookups | None = None,
        seen: SignatureMemory | None = None,
    ) -> PreparedPush:
        ref = parse_ref(self.ref_for(plan.path))
        notes = dict(self.annotations(plan.path)) if self.annotations else None
        return prepare_checked(self.client, ref, plan, self.key, notes, lookups, seen)


# --- cloudboot publish ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlanPublishOutcome:
    plan: str  # relative to plans/
    ref: str
    status: str  # published | unchanged | invalid | failed | skipped | stale | pruned | held
    digest: str | None = None
    uploaded_bytes: int = 0
    error: str | None = None
    canary: dict[str, Any] | None = None  # the canary's verdict, when one ran
    registries: dict[str, str] | None = None  # with [publish].mirrors: registry -> what happened

    @property
    def ok(self) -> bool:
        return self.status in ("published", "unchanged", "stale", "pruned")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def find_plans(config: Config) -> list[Path]:
    rules = IgnoreRules.for_workspace(config.root, config.watch.ignore)
    if not config.plans_dir.is_dir():
        raise CloudbootError("no plans/ directory in the workspace", where=str(config.root))
    return sorted(
        p
        for p in config.plans_dir.rglob(f"*{PLAN_SUFFIX}")
        if p.is_file() and not rules.is_ignored(p.relative_to(config.root).as_posix())
    )


def publish_plans(
    plans: list[Path],
    plans_dir: Path,
    publisher: PlanPublisher,
    memory: PlanMemory | None = None,
    progress: bool = False,
    canary: CanaryPolicy | None = None,
    seen: SignatureMemory | None = None,
) -> list[PlanPublishOutcome]:
    """Validate all, then publish all (nothing when any is invalid); with ``canary``, a
    changed plan's tag moves only after its canary passed."""
    run = CanaryRun(canary) if canary else None
    upstream = publisher.config.publish.upstream
    memory = memory or PlanMemory(None, validator_fingerprint(upstream))
    fleet = check_plans(plans, memory, upstream=upstream)
    lookups = TagLookups()
    invalid = fleet.invalid
    bar = Progress("publishing", len(plans)) if progress and len(plans) > 1 else NoProgress()

    def one(plan: Path) -> PlanPublishOutcome:
        rel = plan.relative_to(plans_dir).as_posix()
        ref = publisher.ref_for(plan)
        if plan in invalid:
            return PlanPublishOutcome(rel, ref, "invalid", error=invalid[plan])
        if invalid:
            return PlanPublishOutcome(
                rel, ref, "skipped", error="not published: another plan is invalid"
            )
        verdict = None
        try:
            checked = with_pin_refs(fleet.checked[plan], memory)
            if run is None:
                result = publisher.publish_checked(checked, lookups, seen)
            else:
                result, verdict = publisher.publish_gated(checked, run)
        except CloudbootError as exc:  # every caller prints the outcomes: debug, not twice
            log.debug("publish failed", plan=rel, error=str(exc))
            return PlanPublishOutcome(rel, ref, "failed", error=str(exc))
        tried = verdict.to_json() if verdict else None
        if verdict is not None and not verdict.passed:
            error = f"canary: {verdict.result}; production tag not moved"
            return PlanPublishOutcome(rel, ref, "held", result.digest, error=error, canary=tried)
        status = "published" if result.uploaded else "unchanged"
        return PlanPublishOutcome(
            rel, result.ref, status, result.digest, result.uploaded_bytes, canary=tried
        )

    try:
        return publish_concurrently(plans, one, bar)
    finally:
        memory.save()


def publish_workspace(
    config: Config,
    env: Mapping[str, str] | None = None,
    prune: bool = False,
    progress: bool = False,
    canary: CanaryPolicy | None = None,
) -> list[PlanPublishOutcome]:
    plans = find_plans(config)
    if not plans:
        raise CloudbootError("no plans (*.hcl) to publish", where=str(config.plans_dir))
    refs = check_plan_refs(config, plans)  # one ref per plan, before anything is pushed
    annotations = fleet_annotations(
        config.root, config.plans_dir, os.environ if env is None else env
    )
    publisher = PlanPublisher.from_config(config, annotations, refs)
    if config.publish.mirrors:  # every registry or none (publisher/mirrors.py)
        from publisher.mirrors import publish_mirrored

        if canary is not None or prune:  # silently skipping a gate would be worse
            raise CloudbootError(
                "[publish].mirrors cannot be combined with a canary or --prune yet:"
                " publish without them, or without mirrors",
                where=str(config.source or "cloudboot.toml"),
            )

        return publish_mirrored(plans, config, publisher)
    memory = workspace_memory(config)
    seen = SignatureMemory(config.root / ".cloudboot" / MEMORY_NAME, publisher.key)
    outcomes = publish_plans(plans, config.plans_dir, publisher, memory, progress, canary, seen)
    seen.save()
    stale = stale_tags(config, publisher.client, plans, prune and all(o.ok for o in outcomes))
    return outcomes + [
        PlanPublishOutcome(
            s.plan, s.ref, "pruned" if s.pruned else "stale", s.digest,
            error=None if s.pruned else "plan file deleted; tag left (remove with --prune)",
        )
        for s in stale
    ]  # fmt: skip


def format_outcomes(outcomes: list[PlanPublishOutcome]) -> str:
    lines = []
    for o in outcomes:
        if o.status == "stale":
            lines.append(f"{o.status:9} {o.plan} -> {o.ref}@{o.digest}: {o.error}")
        elif o.ok:
            lines.append(f"{o.status:9} {o.plan} -> {o.ref}@{o.digest}")
        else:
            lines.append(f"{o.status:9} {o.plan}: {o.error}")
        if o.canary and not o.ok:  # where the boot stopped and what it said last
            lines.append(f"          stopped at: {o.canary.get('stopped_at') or 'no output'}")
            lines += [f"          | {t}" for t in str(o.canary.get("tail", "")).splitlines()[-8:]]
    ok = sum(o.ok for o in outcomes)
    stale = sum(o.status in ("stale", "pruned") for o in outcomes)
    lines.append(f"{ok - stale}/{len(outcomes) - stale} plans published or unchanged")
    if stale:
        lines.append(f"{stale} tag(s) of deleted plan files: left or pruned (see above)")
    return "\n".join(lines)
