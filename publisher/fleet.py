"""Publishing a fleet's worth of plans: cost proportional to what changed.

A team with a thousand plans changes one per commit; ``cloudboot publish`` must then
cost one upload and one signature, not a thousand. Three things keep it so:

- Validation is remembered by content: the sha256 of a plan's bytes, salted with a
  fingerprint of the validator's own code (so a new parser or rule re-checks everything),
  goes into ``.cloudboot/validated-plans`` once the plan passed. Only new bytes are parsed.
  (A forked process pool for them was tried and measured: on this 2-core machine, shared
  with other work, it was slower than one process, so it is gone.)
- Plans are published concurrently over one pooled client: an unchanged plan costs the
  tag HEAD and the signature lookup (``publisher.push`` sends no blob, no upload and no
  signature when the tag already holds the digest), and those round trips overlap.
- A plan file deleted from plans/ leaves its tag in the registry (a fleet may still boot
  it); the report says so, and ``--prune`` removes the tag explicitly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from guest.contract import plan as plan_package
from guest.contract.errors import CloudbootError
from guest.contract.oci import Ref, parse_ref
from guest.contract.plan import PlanError, read_plan_bytes
from publisher.annotations import deleted_plan_files
from publisher.config import PLAN_SUFFIX, Config
from publisher.progress import Progress
from publisher.push import CheckedPlan, InvalidPlanError, check_plan
from publisher.registry import RegistryClient, RegistryError

log = structlog.get_logger(__name__)

T = TypeVar("T")

CACHE_NAME = "validated-plans"
#: Concurrent plan publishes: enough to overlap round trips, few enough for one registry.
PUBLISH_WORKERS = 8
#: Bound on the cache file (64 hex digits and a newline per plan).
MAX_CACHE_ENTRIES = 200_000


def validator_fingerprint() -> str:
    """What a validation result depends on besides the bytes: the plan code
    (the HCL parser is part of it: no third-party parser is involved)."""
    digest = hashlib.sha256()
    for source in sorted(Path(plan_package.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


class ValidatedCache:
    """Content keys of plans that passed validation (a set, persisted atomically)."""

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path = path
        self.salt = fingerprint.encode()
        self.known: set[str] = set()
        self.added = False
        if path is not None:
            try:
                lines = path.read_text().splitlines()[:MAX_CACHE_ENTRIES]
            except (OSError, UnicodeDecodeError):
                lines = []
            self.known = {line for line in lines if len(line) == 64}

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.salt + b"\0" + data).hexdigest()

    def __contains__(self, data: bytes) -> bool:
        return self.key(data) in self.known

    def add(self, data: bytes) -> None:
        self.known.add(self.key(data))
        self.added = True

    def save(self) -> None:
        if self.path is None or not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{k}\n" for k in sorted(self.known)[:MAX_CACHE_ENTRIES]))
        tmp.replace(self.path)


def _first_error(errors: Sequence[PlanError]) -> str:
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return str(CloudbootError(f"{errors[0].message}{more}", where=errors[0].where))


def _problem(path: str, data: bytes) -> str | None:
    """Why the plan is invalid (first error, file:line:col), or None."""
    try:
        check_plan(data, Path(path))
    except InvalidPlanError as exc:
        return _first_error(exc.errors)
    return None


@dataclass(frozen=True)
class CheckedFleet:
    checked: dict[Path, CheckedPlan]
    invalid: dict[Path, str]
    parsed: int  # plans whose bytes were new to the cache (the rest were remembered)


def check_plans(plans: Sequence[Path], cache: ValidatedCache) -> CheckedFleet:
    """Every plan checked: remembered bytes at once, new bytes parsed here."""
    datas: dict[Path, bytes] = {}
    invalid: dict[Path, str] = {}
    for plan in plans:
        try:
            datas[plan] = read_plan_bytes(plan)
        except PlanError as exc:
            invalid[plan] = str(CloudbootError(exc.message, where=exc.where))
    unknown = [(str(p), d) for p, d in datas.items() if d not in cache]
    answers = {path: _problem(path, data) for path, data in unknown}
    checked: dict[Path, CheckedPlan] = {}
    for plan, data in datas.items():
        problem = answers.get(str(plan))
        if problem is not None:
            invalid[plan] = problem
            continue
        if str(plan) in answers:
            cache.add(data)
        checked[plan] = CheckedPlan(plan, data)
    cache.save()
    return CheckedFleet(checked, invalid, len(unknown))


def workspace_cache(config: Config) -> ValidatedCache:
    return ValidatedCache(config.root / ".cloudboot" / CACHE_NAME, validator_fingerprint())


# --- publishing ----------------------------------------------------------------------------


def publish_concurrently(
    items: Sequence[Path], publish_one: Callable[[Path], T], progress: Progress
) -> list[T]:
    """``publish_one`` for each plan on a few threads, results in the plans' order."""
    with ThreadPoolExecutor(PUBLISH_WORKERS, thread_name_prefix="cloudboot-publish") as pool:
        futures = [pool.submit(publish_one, item) for item in items]
        results = []
        for future in futures:
            results.append(future.result())
            progress.advance()
    progress.done()
    return results


# --- deleted plans -------------------------------------------------------------------------


@dataclass(frozen=True)
class StaleTag:
    """A tag whose plan file is gone from plans/ (deleted in git history)."""

    plan: str  # relative to plans/
    ref: str
    digest: str
    pruned: bool


def stale_tags(
    config: Config,
    client: RegistryClient,
    current: Iterable[Path],
    prune: bool,
) -> list[StaleTag]:
    """Tags of plans deleted from git that still exist; removed when ``prune``.

    Only plans git saw deleted are considered, so a tag someone else published into the
    same repository is never touched.
    """
    live = {p.resolve() for p in current}
    found = []
    for rel in deleted_plan_files(config.root, config.plans_dir):
        path = config.plans_dir / rel
        if path.resolve() in live or not rel.endswith(PLAN_SUFFIX):
            continue
        ref = parse_ref(config.plan_ref(path))
        info = client.head_manifest(ref)
        if info is None:
            continue
        if prune:
            _delete_tag(client, ref, info.digest)
        found.append(StaleTag(rel, str(ref), info.digest, prune))
    return found


def _delete_tag(client: RegistryClient, ref: Ref, digest: str) -> None:
    """DELETE the tag; registries that only delete by digest (distribution 2.x) get that,
    but only when no other tag in the repository points at the same manifest."""
    url = f"/v2/{ref.repository}/manifests/"
    try:
        client.request("DELETE", ref, url + ref.reference, what="tag DELETE", ok=(202, 200))
        return
    except RegistryError as exc:
        if exc.status not in (400, 405):
            raise
    others = [
        tag
        for tag in client.list_tags(ref)
        if tag != ref.reference
        and (info := client.head_manifest(parse_ref(f"{ref.name}:{tag}"))) is not None
        and info.digest == digest
    ]
    if others:
        raise CloudbootError(
            f"cannot remove only this tag: the registry deletes by digest and"
            f" {', '.join(others)} point(s) at the same manifest",
            where=str(ref),
        )
    client.request("DELETE", ref, url + digest, what="manifest DELETE", ok=(202, 200))
