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
from publisher.annotations import git_annotations
from publisher.config import PLAN_SUFFIX, Config
from publisher.ignore import IgnoreRules
from publisher.planrefs import check_plan_refs
from publisher.push import CheckedPlan, InvalidPlanError, PreparedPush, check_plan, commit
from publisher.push import prepare_plan as prepare_checked
from publisher.registry import RegistryClient, client_from_config
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
    ) -> None:
        self.config = config
        self.client = client
        self.key = key
        self.annotations = annotations
        self._ahead: dict[Path, _Ahead] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, annotations: Annotations | None = None) -> PlanPublisher:
        client = client_from_config(config.registry)
        return cls(config, client, load_signing_key(config), annotations)

    def ref_for(self, plan: Path) -> str:
        return self.config.plan_ref(plan)

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

    def publish_checked(self, plan: CheckedPlan) -> PlanOutcome:
        """Publish bytes the caller has already checked (``cloudboot publish``)."""
        return self._commit(self._prepare_checked(plan), False)

    def _commit(self, prepared: PreparedPush, ahead: bool) -> PlanOutcome:
        result = commit(self.client, prepared)
        return PlanOutcome(
            result.ref, result.digest, result.uploaded, result.uploaded_bytes, prepared_ahead=ahead
        )

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
        return self._prepare_checked(check_plan(data, plan))

    def _prepare_checked(self, plan: CheckedPlan) -> PreparedPush:
        ref = parse_ref(self.ref_for(plan.path))
        notes = dict(self.annotations(plan.path)) if self.annotations else None
        return prepare_checked(self.client, ref, plan, key=self.key, annotations=notes)


# --- cloudboot publish ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlanPublishOutcome:
    plan: str  # relative to plans/
    ref: str
    status: str  # published | unchanged | invalid | failed | skipped
    digest: str | None = None
    uploaded_bytes: int = 0
    error: str | None = None
    registries: dict[str, str] | None = None  # with [publish].mirrors: registry -> what happened

    @property
    def ok(self) -> bool:
        return self.status in ("published", "unchanged")

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


def _check_file(plan: Path) -> CheckedPlan:
    """Read and check one plan; its first error (file:line:col) with a count."""
    try:
        return check_plan(read_plan_bytes(plan), plan)
    except InvalidPlanError as exc:
        raise first_error(exc.errors) from None


def publish_plans(
    plans: list[Path], plans_dir: Path, publisher: PlanPublisher
) -> list[PlanPublishOutcome]:
    """Validate all, then publish all (nothing when any is invalid)."""
    checked: dict[Path, CheckedPlan] = {}
    invalid: dict[Path, str] = {}
    for plan in plans:
        try:
            checked[plan] = _check_file(plan)
        except CloudbootError as exc:
            invalid[plan] = str(exc)
    outcomes = []
    for plan in plans:
        rel = plan.relative_to(plans_dir).as_posix()
        ref = publisher.ref_for(plan)
        if plan in invalid:
            outcomes.append(PlanPublishOutcome(rel, ref, "invalid", error=invalid[plan]))
            continue
        if invalid:
            outcomes.append(
                PlanPublishOutcome(
                    rel, ref, "skipped", error="not published: another plan is invalid"
                )
            )
            continue
        try:
            result = publisher.publish_checked(checked[plan])
        except CloudbootError as exc:
            log.error("publish failed", plan=rel, error=str(exc))
            outcomes.append(PlanPublishOutcome(rel, ref, "failed", error=str(exc)))
            continue
        status = "published" if result.uploaded else "unchanged"
        outcomes.append(
            PlanPublishOutcome(rel, result.ref, status, result.digest, result.uploaded_bytes)
        )
    return outcomes


def publish_workspace(
    config: Config, env: Mapping[str, str] | None = None
) -> list[PlanPublishOutcome]:
    plans = find_plans(config)
    if not plans:
        raise CloudbootError("no plans (*.hcl) to publish", where=str(config.plans_dir))
    check_plan_refs(config, plans)  # one ref per plan, before anything is pushed
    annotations = git_annotations(config.root, os.environ if env is None else env)
    publisher = PlanPublisher.from_config(config, annotations)
    if config.publish.mirrors:  # every registry or none (publisher/mirrors.py)
        from publisher.mirrors import publish_mirrored

        return publish_mirrored(plans, config, publisher)
    return publish_plans(plans, config.plans_dir, publisher)


def format_outcomes(outcomes: list[PlanPublishOutcome]) -> str:
    lines = []
    for o in outcomes:
        if o.ok:
            lines.append(f"{o.status:9} {o.plan} -> {o.ref}@{o.digest}")
        else:
            lines.append(f"{o.status:9} {o.plan}: {o.error}")
    ok = sum(o.ok for o in outcomes)
    lines.append(f"{ok}/{len(outcomes)} plans published or unchanged")
    return "\n".join(lines)
