"""Publishing a fleet's worth of plans: cost proportional to what changed.

A team with a thousand plans changes one per commit; ``cloudboot publish`` must then
cost one upload and one signature, not a thousand. Three things keep it so:

- What the plan text tells is remembered by content: the sha256 of a plan's bytes,
  salted with a fingerprint of the validator's and the pin code (so a new parser or rule
  re-checks everything), goes into ``.cloudboot/plan-facts`` once the plan passed, with
  the tags its targets name (their digests go into the signature). Only new bytes are
  parsed: an unchanged plan is neither validated nor parsed for its pins again.
  (A forked process pool for them was tried and measured: on this 2-core machine, shared
  with other work, it was slower than one process, so it is gone.)
- Plans are published concurrently over one pooled client, and a tag that many plans
  name is looked up once per run (``publisher.pins.TagLookups``): an unchanged plan costs the
  tag HEAD and the signature lookup (``publisher.push`` sends no blob, no upload and no
  signature when the tag already holds the digest), and those round trips overlap.
- A plan file deleted from plans/ leaves its tag in the registry (a fleet may still boot
  it); the report says so, and ``--prune`` removes the tag explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
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
from publisher import pins
from publisher.annotations import deleted_plan_files
from publisher.config import PLAN_SUFFIX, Config
from publisher.pins import pin_refs
from publisher.plancheck import CheckedPlan, InvalidPlanError, check_plan
from publisher.progress import Progress
from publisher.registry import RegistryClient, RegistryError

log = structlog.get_logger(__name__)

T = TypeVar("T")

CACHE_NAME = "plan-facts"
#: Concurrent plan publishes: enough to overlap round trips, few enough for one registry.
PUBLISH_WORKERS = 8
#: Bounds on the cache file: entries, and one entry's line (its key and pin refs).
MAX_CACHE_ENTRIES = 200_000
MAX_LINE = 8192
#: Bumped when what an entry holds changes, so older entries are never read as new ones.
CACHE_FORMAT = "plan-facts/2"


def validator_fingerprint(upstream: bool = False) -> str:
    """What an entry depends on besides the bytes: the plan code (the HCL parser is part
    of it: no third-party parser is involved), the code that derives the pin refs, the
    entry format, and whether upstream's stricter rules applied."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}\0upstream={upstream}\0".encode())
    sources = sorted(Path(plan_package.__file__).parent.glob("*.py"))
    for source in [*sources, Path(pins.__file__)]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


class PlanMemory:
    """What is derived from a plan's text, remembered by the hash of its bytes.

    One entry per plan content that passed validation, holding the tags its targets name
    (``publisher.pins.pin_refs``) once a publish needed them: an unchanged plan is then
    neither validated nor parsed for its pins again, whoever asks (``check_plans`` hands
    both out with the bytes). Validating alone does not derive the refs (that would be a
    second parse of every new plan), so an entry may be valid with refs still unknown.

    Persisted as ``<key>`` (valid) or ``<key>\t<ref> <ref>...`` lines, the last line of a
    key winning; a line that does not read back is no entry, so a damaged file costs a
    re-parse, never a wrong answer. New entries are appended (one changed plan writes a
    line or two); the file is rewritten with only the entries this run used once it
    holds more than twice as many lines.
    """

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path = path
        self.salt = fingerprint.encode()
        self.known: dict[str, tuple[str, ...] | None] = {}
        self.new: list[str] = []
        self.used: set[str] = set()
        self.lines = 0
        self._lock = threading.Lock()
        if path is not None:
            try:  # only newline-terminated lines: an append cut short is no entry
                lines = path.read_text().split("\n")
            except (OSError, UnicodeDecodeError):
                lines = [""]
            # a torn last line would swallow the next append: rewrite the file instead
            self.lines = len(lines) - 1 if lines[-1] == "" else MAX_CACHE_ENTRIES
            for line in lines[:-1][:MAX_CACHE_ENTRIES]:
                key, tab, refs = line.partition("\t")
                if len(key) == 64 and len(line) <= MAX_LINE:
                    self.known[key] = tuple(refs.split()) if tab else None

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.salt + b"\0" + data).hexdigest()

    def valid(self, data: bytes) -> bool:
        """Whether these bytes passed validation before (under this fingerprint)."""
        key = self.key(data)
        if key not in self.known:
            return False
        self.used.add(key)
        return True

    def pin_refs(self, data: bytes) -> tuple[str, ...] | None:
        """The remembered pin refs of these bytes, or None when not derived yet."""
        return self.known.get(self.key(data))

    def add(self, data: bytes, refs: tuple[str, ...] | None = None) -> None:
        """Valid bytes, with their pin refs when known."""
        key = self.key(data)
        with self._lock:
            self.known[key] = refs
            self.new.append(key)
            self.used.add(key)

    def save(self) -> None:
        if self.path is None or not self.new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.lines + len(self.new) <= max(2 * len(self.used), 64):
                with self.path.open("a") as f:  # a torn last line is no entry (see above)
                    f.write(self._lines(self.new))
                self.lines += len(self.new)
            else:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(self._lines(sorted(self.used)[:MAX_CACHE_ENTRIES]))
                tmp.replace(self.path)
                self.lines = min(len(self.used), MAX_CACHE_ENTRIES)
            self.new = []

    def _lines(self, keys: Iterable[str]) -> str:
        return "".join(
            f"{k}\n" if (refs := self.known[k]) is None else f"{k}\t{' '.join(refs)}\n"
            for k in keys
        )


def _first_error(errors: Sequence[PlanError]) -> str:
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return str(CloudbootError(f"{errors[0].message}{more}", where=errors[0].where))


def _problem(path: Path, data: bytes, upstream: bool) -> str | None:
    """Why new bytes are invalid (first error, file:line:col), or None."""
    try:
        check_plan(data, path, upstream=upstream)
    except InvalidPlanError as exc:
        return _first_error(exc.errors)
    return None


@dataclass(frozen=True)
class CheckedFleet:
    checked: dict[Path, CheckedPlan]
    invalid: dict[Path, str]
    parsed: int  # plans whose bytes were new to the memory (the rest were remembered)


def check_plans(
    plans: Sequence[Path], memory: PlanMemory, *, upstream: bool = False
) -> CheckedFleet:
    """Every plan checked: remembered bytes at once, new bytes parsed here (once).

    ``upstream`` must match the fingerprint ``memory`` was opened with
    (``validator_fingerprint(upstream)``)."""
    datas: dict[Path, bytes] = {}
    invalid: dict[Path, str] = {}
    for plan in plans:
        try:
            datas[plan] = read_plan_bytes(plan)
        except PlanError as exc:
            invalid[plan] = str(CloudbootError(exc.message, where=exc.where))
    checked: dict[Path, CheckedPlan] = {}
    parsed = 0
    for plan, data in datas.items():
        if not memory.valid(data):
            parsed += 1
            problem = _problem(plan, data, upstream)
            if problem is not None:
                invalid[plan] = problem
                continue
            memory.add(data)
        checked[plan] = CheckedPlan(plan, data, memory.pin_refs(data))
    memory.save()
    return CheckedFleet(checked, invalid, parsed)


def with_pin_refs(plan: CheckedPlan, memory: PlanMemory) -> CheckedPlan:
    """``plan`` with its pin refs: remembered, or derived from its text now and remembered
    (``memory.save()`` once the run is done)."""
    if plan.pin_refs is not None:
        return plan
    refs = pin_refs(plan.data, str(plan.path))
    memory.add(plan.data, refs)
    return dataclasses.replace(plan, pin_refs=refs)


def workspace_memory(config: Config) -> PlanMemory:
    upstream = config.publish.upstream
    return PlanMemory(config.root / ".cloudboot" / CACHE_NAME, validator_fingerprint(upstream))


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
