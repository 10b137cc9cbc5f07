"""The running watcher: observer thread -> change queue -> one worker thread -> pipeline.

The main thread only supervises: it sends sd_notify READY and WATCHDOG pings while both
the observer and the worker are alive and the worker is not stuck in one run for longer
than ``hang_after`` (a publish hanging on a half-open connection, a build that never
ends: no ping, so systemd's ``WatchdogSec`` restarts the service), applies SIGHUP
reloads, and on SIGTERM/SIGINT lets the worker finish the step it is in (a publish moves
its tag only after the signature is up; a build renames its image into place atomically)
before stopping the VM, and only a VM this watcher started itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from publisher.ignore import IgnoreRules
from watcher.watch.debounce import Batch, ChangeQueue
from watcher.watch.events import WorkspaceEventHandler, observe
from watcher.watch.pipeline import BuildStage, Pipeline, PlanStage, ReloadObserver, VmStage
from watcher.watch.sdnotify import Notifier, watchdog_interval
from watcher.watch.status import StatusBook

log = structlog.get_logger(__name__)

#: How often the supervisor checks its threads when systemd asks for no watchdog.
IDLE_CHECK_SECONDS = 5.0
#: How long a stop waits for the step in progress before abandoning it.
STOP_GRACE_SECONDS = 20.0
#: One pipeline run longer than this is a hang: the watchdog pings stop. Above the longest
#: honest run (a kernel and boot.iso build on a slow machine, registry retries included).
HANG_SECONDS = 3600.0


@dataclass(frozen=True)
class WatchSetup:
    """Everything that comes from the config and may change on a reload (SIGHUP)."""

    root: Path
    plans_dir: Path
    kernel_dir: Path
    window: float
    rules: IgnoreRules
    plan_stage: PlanStage | None
    build_stage: BuildStage | None
    prepare_ahead: bool = True  # plan stage starts on settled edits inside the window


class WatchDaemon:
    def __init__(
        self,
        setup: WatchSetup,
        status: StatusBook,
        *,
        vm_stage: VmStage | None = None,
        notifier: Notifier | None = None,
        reload: Callable[[], WatchSetup] | None = None,
        initial_run: bool = True,
        hang_after: float = HANG_SECONDS,
        reload_watch: ReloadObserver | None = None,
    ) -> None:
        self.setup = setup
        self.hang_after = hang_after
        self._busy_since: float | None = None  # when the worker's current run started
        self._hang_reported = False
        self.status = status
        self.notifier = notifier or Notifier(socket_path="")
        self._reload_fn = reload
        self.initial_run = initial_run
        self.queue = ChangeQueue(setup.window)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = threading.Event()
        self._pending_setup: WatchSetup | None = None
        self._lock = threading.Lock()
        self.crashed: BaseException | None = None
        self.handler: WorkspaceEventHandler | None = None
        self.pipeline = Pipeline(
            plans_dir=setup.plans_dir,
            kernel_dir=setup.kernel_dir,
            plan_stage=setup.plan_stage,
            build_stage=setup.build_stage,
            vm_stage=vm_stage,
            status=status,
            rules=setup.rules,
            should_stop=self._stopping.is_set,
            reload_watch=reload_watch,
        )

    # -- requests from signal handlers or other threads (cheap, never block) ------------

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the supervisor -----------------------------------------------------------------

    def run(self) -> None:
        """Watch until ``request_stop``; raises if the worker died of an unexpected error."""
        setup = self.setup
        dirs = [setup.plans_dir, setup.kernel_dir]
        with observe(setup.root, dirs, setup.rules, self.queue.add) as handler:
            self.handler = handler
            worker = threading.Thread(target=self._work, name="cloudboot-pipeline", daemon=True)
            worker.start()
            self.notifier.ready(f"watching {', '.join(d.name + '/' for d in dirs)}")
            log.info("watching", dirs=[str(d) for d in dirs], debounce_ms=setup.window * 1000)
            interval = watchdog_interval()
            tick = min(interval, IDLE_CHECK_SECONDS) if interval else IDLE_CHECK_SECONDS
            while not self._stopping.is_set():
                self._wake.wait(tick)
                self._wake.clear()
                if not worker.is_alive():
                    break
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._reload()
                if not self.hung():
                    self.notifier.watchdog()
            self.notifier.stopping()
            log.info("stopping: letting the current step finish")
            self._stopping.set()
            self.queue.close()
            worker.join(STOP_GRACE_SECONDS)
            if worker.is_alive():
                # e.g. a publish retrying against a dead registry. Abandoning it is safe:
                # the tag only moves after the signature, images only appear by rename.
                log.warning("current step still running; aborting it", grace_s=STOP_GRACE_SECONDS)
        self._shutdown_vm()
        self.status.set_state("stopped")
        if self.crashed is not None:
            raise CloudbootError(f"watcher pipeline crashed: {self.crashed}") from self.crashed

    def _reload(self) -> None:
        if self._reload_fn is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_fn()
        except CloudbootError as exc:
            log.error("config reload failed; keeping the previous config", error=str(exc))
        else:
            self.queue.set_window(new.window)
            if self.handler is not None:
                self.handler.rules = new.rules
            with self._lock:
                self._pending_setup = new
            log.info("config reloaded", debounce_ms=new.window * 1000)
        self.notifier.ready()

    def _apply_pending_setup(self) -> None:
        with self._lock:
            new, self._pending_setup = self._pending_setup, None
        if new is not None:
            self.setup = new
            self.pipeline.plan_stage = new.plan_stage
            self.pipeline.build_stage = new.build_stage
            self.pipeline.rules = new.rules

    def _shutdown_vm(self) -> None:
        vm = self.pipeline.vm_stage
        if vm is None:
            return
        try:
            if vm.started_by_watcher:
                log.info("stopping the VM this watcher started")
            vm.shutdown()
            self.status.record_vm(vm.state())
        except CloudbootError as exc:
            log.error("stopping the VM failed", error=str(exc))

    def hung(self) -> bool:
        """True while the worker has been in one run for longer than ``hang_after``."""
        since = self._busy_since
        stuck = since is not None and time.monotonic() - since > self.hang_after
        if stuck and not self._hang_reported:
            log.error("pipeline run hangs: watchdog pings stopped", after_s=self.hang_after)
        elif not stuck and self._hang_reported:
            log.info("pipeline run finished after a hang: watchdog pings resume")
        self._hang_reported = stuck
        return stuck

    def _run_batch(self, batch: Batch) -> None:
        self._busy_since = time.monotonic()
        try:
            self.pipeline.run_batch(batch)
        finally:
            self._busy_since = None

    # -- the worker ---------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if self.initial_run:
                everything = self.pipeline.everything()
                self._run_batch(Batch(frozenset(everything), 0))
            else:
                self.pipeline.prime()
            self.status.set_state("idle")
            while True:
                ahead = self.pipeline.prepare_ahead if self.setup.prepare_ahead else None
                batch = self.queue.next_batch(on_settle=ahead)
                if batch is None:
                    return
                self._apply_pending_setup()
                self._run_batch(batch)
        except BaseException as exc:
            log.exception("watcher pipeline crashed")
            self.crashed = exc
            self.request_stop()
