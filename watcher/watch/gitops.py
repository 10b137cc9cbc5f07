"""``cloudboot publish``: validate and publish every plan under ``plans/`` once (CI).

Every plan is validated before any is published, so a bad commit publishes nothing.
Publishing is idempotent: manifests are canonical and carry no wall-clock time, and the
``org.opencontainers.image.revision`` annotation is the last commit that touched *that
plan file* (not HEAD), so a commit that leaves a plan alone leaves its manifest, digest
and tag alone too: the publisher finds the tag signed at that digest and sends nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from guest.contract.errors import CloudbootError
from publisher.config import Config
from publisher.run import run
from watcher.watch.ignore import IgnoreRules
from watcher.watch.pipeline import PLAN_SUFFIX, PlanStage

log = structlog.get_logger(__name__)

REVISION = "org.opencontainers.image.revision"
SOURCE = "org.opencontainers.image.source"


@dataclass(frozen=True)
class PlanPublishOutcome:
    plan: str  # relative to plans/
    ref: str
    status: str  # published | unchanged | invalid | failed | skipped
    digest: str | None = None
    uploaded_bytes: int = 0
    error: str | None = None

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


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = run(["git", "-C", root, *args], check=False)
    except CloudbootError:  # git not installed
        return None
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def git_source(root: Path, env: Mapping[str, str]) -> str | None:
    """Where the plans come from: the CI's repository URL, else git's ``origin``."""
    server, repo = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"{server}/{repo}"
    return _git(root, "remote", "get-url", "origin") or None


def plan_revision(root: Path, plan: Path) -> str | None:
    """The last commit that changed ``plan``; ``-dirty`` when the file differs from it."""
    rev = _git(root, "log", "-1", "--format=%H", "--", str(plan))
    if not rev:
        return None
    dirty = _git(root, "status", "--porcelain", "--", str(plan))
    return f"{rev}-dirty" if dirty else rev


def git_annotations(root: Path, env: Mapping[str, str]) -> Callable[[Path], dict[str, str]]:
    source = git_source(root, env)

    def annotations(plan: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        revision = plan_revision(root, plan)
        if revision:
            out[REVISION] = revision
        if source:
            out[SOURCE] = source
        return out

    return annotations


def publish_plans(
    plans: list[Path], plans_dir: Path, stage: PlanStage, check: Callable[[Path], object]
) -> list[PlanPublishOutcome]:
    """Validate all, then publish all (nothing when any is invalid)."""
    invalid: dict[Path, str] = {}
    for plan in plans:
        try:
            check(plan)
        except CloudbootError as exc:
            invalid[plan] = str(exc)
    outcomes = []
    for plan in plans:
        rel = plan.relative_to(plans_dir).as_posix()
        ref = stage.ref_for(plan)
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
            result = stage.publish(plan)
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
    from watcher.watch.publishing import PublisherPlanStage, check_plan

    plans = find_plans(config)
    if not plans:
        raise CloudbootError("no plans (*.hcl) to publish", where=str(config.plans_dir))
    annotations = git_annotations(config.root, os.environ if env is None else env)
    stage = PublisherPlanStage.from_config(config, annotations)
    return publish_plans(plans, config.plans_dir, stage, check_plan)


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
