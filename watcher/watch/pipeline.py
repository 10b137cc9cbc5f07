"""The dependency-aware pipeline one batch of changed paths runs through.

Order within a run: every changed plan is validated, signed and published; then, if
anything under ``kernel/`` changed, the UKI and boot.iso are rebuilt; then, if any of that
produced something new, the VM is restarted once with a cleared NVRAM. Stages are injected
(``PlanStage``, ``BuildStage``, ``VmStage``) so this module is only about *what runs when*.

Change detection is by content: a path whose bytes hash the same as when it last went
through a stage successfully is dropped, so ``touch`` or a save without edits does
nothing. Failures are isolated per stage: the error is logged with its location and
recorded, nothing is published for that input, the last good artifacts stay, and the
hash is not recorded, so the next save (even an identical one) tries again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from guest.contract.errors import CloudbootError
from publisher.config import PLAN_SUFFIX
from publisher.ignore import IgnoreRules
from publisher.workspace import PlanOutcome
from watcher.watch.debounce import Batch
from watcher.watch.outcomes import BuildOutcome, Outcome, StageName, StageResult, VmOutcome
from watcher.watch.reload import ReloadStart
from watcher.watch.status import StatusBook, iso_time, outcome_json

log = structlog.get_logger(__name__)

#: A burst changing more plans than this (a checkout) is not prepared ahead of its run.
AHEAD_LIMIT = 4


class PlanStage(Protocol):
    def ref_for(self, plan: Path) -> str: ...

    def prepare(self, plan: Path) -> None:
        """Start ``publish``'s work for the plan's current bytes, short of the tag; never raises.

        Called while the debounce window is still open; ``publish`` then reuses the work
        if the file still holds the same bytes. Doing nothing is a valid implementation.
        """
        ...

    def publish(self, plan: Path) -> PlanOutcome:
        """Validate, sign and publish; raise ``CloudbootError`` (with file:line) on failure."""
        ...


class BuildStage(Protocol):
    def build(self) -> BuildOutcome:
        """Rebuild UKI + boot.iso incrementally with an atomic rename; raise on failure."""
        ...


class ReloadObserver(Protocol):
    """Follows the guest console after a restart (``watcher.watch.reload.ReloadWatch``)."""

    def mark(self) -> int: ...

    def begin(self, start: ReloadStart) -> None: ...


class VmStage(Protocol):
    def restart(self) -> str:
        """(Re)start the VM with a cleared NVRAM; returns the new state."""
        ...

    def state(self) -> str: ...

    def shutdown(self) -> None:
        """Stop the VM if (and only if) this watcher started it."""
        ...

    @property
    def started_by_watcher(self) -> bool: ...


def file_digest(path: Path) -> str | None:
    """sha256 of a regular file's bytes; None when it is gone (or not a file)."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


@dataclass
class Work:
    """What one batch asks for, after content-hash filtering."""

    plans: list[Path] = field(default_factory=list)
    removed_plans: list[Path] = field(default_factory=list)
    kernel: dict[Path, str | None] = field(default_factory=dict)  # changed file -> new hash
    plan_hashes: dict[Path, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.plans or self.removed_plans or self.kernel)


@dataclass(frozen=True)
class RunReport:
    """One pipeline run: each stage's result, in order."""

    number: int
    stages: list[StageResult]
    duration_ms: float

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)


class Pipeline:
    def __init__(
        self,
        *,
        plans_dir: Path,
        kernel_dir: Path,
        plan_stage: PlanStage | None,
        build_stage: BuildStage | None,
        vm_stage: VmStage | None,
        status: StatusBook,
        rules: IgnoreRules | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        reload_watch: ReloadObserver | None = None,
    ) -> None:
        self.plans_dir = plans_dir.resolve()
        self.kernel_dir = kernel_dir.resolve()
        self.plan_stage = plan_stage
        self.build_stage = build_stage
        self.vm_stage = vm_stage
        self.status = status
        self.rules = rules or IgnoreRules()
        self.should_stop = should_stop
        self.reload_watch = reload_watch
        self.hashes: dict[Path, str] = {}  # content last handled successfully
        self.runs = 0

    # -- what changed -------------------------------------------------------------------

    def _expand(self, path: Path) -> set[Path]:
        """A directory event stands for every file below it, present or previously seen."""
        path = path.resolve() if path.exists() else path.parent.resolve() / path.name
        if path.is_dir():
            found = {p for p in path.rglob("*") if p.is_file()}
            return found | {p for p in self.hashes if p.is_relative_to(path)}
        gone_dir = {p for p in self.hashes if p.is_relative_to(path) and p != path}
        return gone_dir or {path}

    def _ignored(self, path: Path, base: Path) -> bool:
        root = base.parent
        return self.rules.is_ignored(path.relative_to(root).as_posix())

    def plan_work(self, paths: Iterable[Path]) -> Work:
        work = Work()
        files: set[Path] = set()
        for path in paths:
            files |= self._expand(path)
        for path in sorted(files):
            if path.is_relative_to(self.plans_dir):
                if path.suffix != PLAN_SUFFIX or self._ignored(path, self.plans_dir):
                    continue
                digest = file_digest(path)
                if digest is None:
                    if path in self.hashes or not path.exists():
                        work.removed_plans.append(path)
                elif self.hashes.get(path) != digest:
                    work.plans.append(path)
                    work.plan_hashes[path] = digest
            elif path.is_relative_to(self.kernel_dir):
                if self._ignored(path, self.kernel_dir):
                    continue
                digest = file_digest(path)
                if self.hashes.get(path) != digest:
                    work.kernel[path] = digest
        return work

    def prime(self) -> None:
        """Record the current content as handled (``--no-initial``: trust what is out there)."""
        work = self.plan_work(self.everything())
        self.hashes.update(work.plan_hashes)
        self.hashes.update({p: d for p, d in work.kernel.items() if d is not None})

    def everything(self) -> list[Path]:
        """Every path the initial run considers: both trees."""
        return [d for d in (self.plans_dir, self.kernel_dir) if d.is_dir()]

    def prepare_ahead(self, paths: Iterable[Path]) -> None:
        """Let the plan stage start on changed plans while the debounce window runs."""
        if self.plan_stage is None:
            return
        try:  # only plans: hashing a burst of kernel/ files here would be wasted
            under_plans = [p for p in paths if p.resolve().is_relative_to(self.plans_dir)]
            plans = self.plan_work(under_plans).plans
            if len(plans) > AHEAD_LIMIT:
                return
            for plan in plans:
                self.plan_stage.prepare(plan)
        except Exception as exc:  # only an optimisation: the run itself will report it
            log.debug("preparing ahead failed", error=str(exc))

    # -- running ------------------------------------------------------------------------

    def run_batch(self, batch: Batch) -> RunReport | None:
        """Filter the batch by content and run what is left; None when nothing changed."""
        last = max(batch.paths, key=lambda p: str(p)) if batch.paths else None
        self.status.record_batch(str(last) if last else "", batch.events, time.time())
        work = self.plan_work(batch.paths)
        if not work:
            log.debug("batch without content changes", events=batch.events)
            self.status.flush()
            return None
        return self.run(work, edited_at=batch.first_at)

    def run(self, work: Work, *, edited_at: float | None = None) -> RunReport:
        number = self.runs + 1
        started = time.time()
        t0 = time.perf_counter()
        self.status.set_state("running", flush=False)  # written with the first stage
        stages: list[StageResult] = []
        produced = False
        for plan in work.removed_plans:
            self.hashes.pop(plan, None)
            log.warning("plan file removed; its tag in the registry stays", file=str(plan))
        for plan in work.plans:
            if self.should_stop():
                break
            result = self._publish(plan, work.plan_hashes[plan])
            stages.append(result)
            produced |= result.produced
        if work.kernel and not self.should_stop():
            result = self._build(work.kernel)
            stages.append(result)
            produced |= result.produced
        if produced and self.vm_stage is not None and not self.should_stop():
            stages.append(self._restart_vm(stages, edited_at or started))
        duration = (time.perf_counter() - t0) * 1000
        report = RunReport(number, stages, duration)
        self.runs = number  # counted once complete, so a reader seeing N sees N finished runs
        self.status.record_run(started, duration, report.ok, [s.stage for s in stages])
        self.status.set_state("idle")
        log.info(
            "run done",
            run=report.number,
            ok=report.ok,
            duration_ms=round(duration, 1),
            stages=[f"{s.stage}:{'ok' if s.ok else 'error'}" for s in stages],
        )
        return report

    def _timed(self, stage: StageName, subject: str, body: Callable[[], Outcome]) -> StageResult:
        started = time.time()
        t0 = time.perf_counter()
        try:
            outcome = body()
        except Exception as exc:  # isolate every failure: the watcher must keep going
            ms = (time.perf_counter() - t0) * 1000
            expected = isinstance(exc, CloudbootError)
            message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
            log.error(
                f"{stage} stage failed",
                stage=stage,
                subject=subject,
                duration_ms=round(ms, 1),
                error=message,
                exc_info=not expected,
            )
            result = StageResult(stage, subject, False, ms, iso_time(started), error=message)
        else:
            ms = (time.perf_counter() - t0) * 1000
            log.info(
                f"{stage} stage done",
                stage=stage,
                subject=subject,
                duration_ms=round(ms, 1),
                **outcome_json(outcome),
            )
            result = StageResult(stage, subject, True, ms, iso_time(started), outcome)
        self.status.record_stage(result)
        self.status.flush()
        return result

    def _rel(self, plan: Path) -> str:
        return plan.relative_to(self.plans_dir).as_posix()

    def _publish(self, plan: Path, digest: str) -> StageResult:
        stage = self.plan_stage
        rel = self._rel(plan)
        if stage is None:
            return self._timed("plan", rel, _disabled("plan publishing"))
        ref = stage.ref_for(plan)
        result = self._timed("plan", rel, lambda: stage.publish(plan))
        if isinstance(result.outcome, PlanOutcome):
            self.hashes[plan] = digest
            self.status.record_plan(rel, ref=ref, digest=result.outcome.digest, error=None)
        else:
            self.hashes.pop(plan, None)
            self.status.record_plan(rel, ref=ref, digest=None, error=result.error)
        return result

    def _build(self, changed: dict[Path, str | None]) -> StageResult:
        stage = self.build_stage
        if stage is None:
            return self._timed("kernel", "kernel/", _disabled("the kernel stage"))
        result = self._timed("kernel", str(self.kernel_dir.name) + "/", stage.build)
        for path, digest in changed.items():
            if result.ok and digest is not None:
                self.hashes[path] = digest
            else:
                self.hashes.pop(path, None)
        return result

    def _restart_vm(self, before: list[StageResult], edited_at: float) -> StageResult:
        vm = self.vm_stage
        assert vm is not None
        watch = self.reload_watch
        mark = watch.mark() if watch is not None else 0
        restart_at = time.time()

        def body() -> VmOutcome:
            state = vm.restart()
            self.status.record_vm(state, started_by_watcher=vm.started_by_watcher)
            return VmOutcome(state)

        result = self._timed("vm", "vm", body)
        if watch is not None and result.ok:
            spent = {name: sum(s.duration_ms for s in before if s.stage == name) / 1000
                     for name in ("plan", "kernel")}  # fmt: skip
            host = getattr(vm, "staged_target", None)  # the host loop's BackendVmStage
            watch.begin(ReloadStart(mark, edited_at, restart_at, restart_at + result.duration_ms
                                    / 1000, spent["plan"], spent["kernel"], host))  # fmt: skip
        return result


def _disabled(what: str) -> Callable[[], Outcome]:
    def fail() -> Outcome:
        raise CloudbootError(f"{what} is not available in this watcher")

    return fail
