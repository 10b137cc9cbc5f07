"""``[publish].mirrors``: one publish to several registries, all of them or none.

A fleet that boots from two registries (two sites, a primary and a standby) must never
boot two different plans under one tag, so the publish is done in two phases:

1. *Prepare* every plan on every registry: blobs, the manifest by digest and its
   signature (``publisher.push.prepare``). Nothing a guest follows has changed yet; a
   failure here fails the run with every tag where it was.
2. *Move the tags*, registry after registry. If one tag move fails, the tags this run
   already moved are put back to the digests they held (their manifests and signatures
   are still in the registry by digest), and the run fails naming the registry.

What this cannot give: a registry has no transactions, so between the first tag PUT and
the put-back a reader can see the new plan on one registry (for the length of a few
requests); and a tag this run *created* cannot be put back (the distribution API has no
tag deletion docker-registry honours), which the outcome says. A guest that booted the
new plan in that window keeps its floor; the put-back old plan then needs a fresher
publish (``cloudboot plan rollback``) on that guest, exactly as after any rollback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.oci import Ref, parse_ref
from guest.contract.plan import read_plan_bytes
from publisher.config import Config
from publisher.plancheck import CheckedPlan, InvalidPlanError, check_plan
from publisher.push import PreparedPush, PushResult, commit, prepare_plan
from publisher.workspace import PlanPublisher, PlanPublishOutcome, first_error

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Placement:
    """One plan on one registry."""

    plan: Path
    rel: str
    registry: str
    ref: Ref


@dataclass(frozen=True)
class Moved:
    """A tag this run moved: where it was before (None: this run created it)."""

    placement: Placement
    previous: str | None


class MirrorError(CloudbootError):
    """A phase failed on one registry; ``registry`` names it."""

    def __init__(self, registry: str, message: str) -> None:
        self.registry = registry
        super().__init__(f"{registry}: {message}")


def registries(config: Config) -> list[str]:
    return list(dict.fromkeys([config.registry.url, *config.publish.mirrors]))


def placements(plans: Sequence[Path], config: Config, publisher: PlanPublisher) -> list[Placement]:
    out = []
    for registry in registries(config):
        for plan in plans:
            ref = dataclasses.replace(parse_ref(publisher.ref_for(plan)), registry=registry)
            out.append(
                Placement(plan, plan.relative_to(config.plans_dir).as_posix(), registry, ref)
            )
    return out


def check_all(plans: Sequence[Path]) -> tuple[dict[Path, CheckedPlan], dict[Path, str]]:
    """Every plan checked before anything is sent: (valid ones, first error of the others)."""
    checked: dict[Path, CheckedPlan] = {}
    invalid: dict[Path, str] = {}
    for plan in plans:
        try:
            checked[plan] = check_plan(read_plan_bytes(plan), plan)
        except InvalidPlanError as exc:
            invalid[plan] = str(first_error(exc.errors))
        except CloudbootError as exc:  # unreadable, too large
            invalid[plan] = str(exc)
    return checked, invalid


def _prepare(publisher: PlanPublisher, where: Placement, plan: CheckedPlan) -> PreparedPush:
    notes = dict(publisher.annotations(plan.path)) if publisher.annotations else None
    try:
        return prepare_plan(publisher.client, where.ref, plan, key=publisher.key, annotations=notes)
    except CloudbootError as exc:
        raise MirrorError(where.registry, f"preparing {where.ref} failed: {exc}") from None


def _move_tags(
    publisher: PlanPublisher, prepared: list[tuple[Placement, PreparedPush]]
) -> dict[Placement, PushResult]:
    """Commit every prepared push; on a failure put the moved tags back and raise."""
    client = publisher.client
    results: dict[Placement, PushResult] = {}
    moved: list[Moved] = []
    for where, push in prepared:
        try:
            head = client.head_manifest(where.ref) if push.move_tag else None
            results[where] = commit(client, push)
        except CloudbootError as exc:
            restored = put_back(publisher, moved)
            raise MirrorError(
                where.registry,
                f"moving {where.ref} failed ({exc}); nothing published: {restored}",
            ) from None
        if push.move_tag:
            moved.append(Moved(where, head.digest if head else None))
    return results


def put_back(publisher: PlanPublisher, moved: Sequence[Moved]) -> str:
    """Point every moved tag at what it held before; says what it did (and could not)."""
    client = publisher.client
    done, left = [], []
    for item in reversed(moved):
        ref, previous = item.placement.ref, item.previous
        if previous is None or ref.tag is None:
            left.append(f"{ref} (created by this run; a registry cannot delete a tag)")
            continue
        try:
            data, media_type, _ = client.get_manifest(ref.with_digest(previous))
            client.put_manifest(ref, data, media_type, ref.tag)
            done.append(str(ref))
        except CloudbootError as exc:
            left.append(f"{ref} (putting back {previous} failed: {exc})")
    log.warning("tags put back after a failed mirror publish", restored=done, left=left)
    text = f"tags put back: {', '.join(done) or 'none'}"
    return text + (f"; NOT put back: {', '.join(left)}" if left else "")


def publish_mirrored(
    plans: list[Path], config: Config, publisher: PlanPublisher
) -> list[PlanPublishOutcome]:
    """Every plan on every registry of ``[registry].url`` + ``[publish].mirrors``, or none."""
    checked, invalid = check_all(plans)
    names = registries(config)
    where = placements(plans, config, publisher)

    def failed(plan: Path, status: str, error: str, states: dict[str, str]) -> PlanPublishOutcome:
        rel = plan.relative_to(config.plans_dir).as_posix()
        return PlanPublishOutcome(
            rel, publisher.ref_for(plan), status, error=error, registries=states
        )

    if invalid:
        skipped = "not published: another plan is invalid"
        return [
            failed(p, "invalid" if p in invalid else "skipped", invalid.get(p, skipped), {})
            for p in plans
        ]
    try:
        prepared = [(w, _prepare(publisher, w, checked[w.plan])) for w in where]
        results = _move_tags(publisher, prepared)
    except MirrorError as exc:
        log.error("mirrored publish failed", registry=exc.registry, error=str(exc))
        states = {r: ("failed" if r == exc.registry else "not moved") for r in names}
        return [failed(p, "failed", str(exc), states) for p in plans]
    outcomes = []
    for plan in plans:
        mine = {w.registry: results[w] for w in where if w.plan == plan}
        states = {r: "published" if res.uploaded else "unchanged" for r, res in mine.items()}
        first = mine[names[0]]
        status = "published" if "published" in states.values() else "unchanged"
        rel = plan.relative_to(config.plans_dir).as_posix()
        sent = sum(r.uploaded_bytes for r in mine.values())
        outcomes.append(
            PlanPublishOutcome(rel, first.ref, status, first.digest, sent, registries=states)
        )
    return outcomes
