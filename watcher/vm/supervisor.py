"""Keep the VM running with Path C semantics, and tell restarts we ask for from the rest.

- A restart we ask for (after a publish) resets NVRAM: the guest agent runs again and
  re-stages the target from the new plan.
- A VM that stops on its own is relaunched WITHOUT touching NVRAM. Apple VZ normally
  resets a rebooting Linux guest in place (the vfkit process stays, so there is nothing to
  see here: the firmware boots the agent's Boot0001 and the target comes up, which is the
  guest's second pass, not a crash). Should a VZ version report the reboot as "VM
  stopped" instead, vfkit exits; the relaunch must keep the Boot0001 the agent just wrote
  for the staged target to boot. That one stop per staging is well under the crash-loop
  limit below, so it is never mistaken for a crash loop.
- QEMU resets a rebooting guest in place, and its exit means the guest powered off, which
  is left alone (``relaunch_any_stop=False``). The one exception is the guest agent's
  reboot into its staged target under TCG, which the supervisor hands to a fresh process
  (``QemuBackend.reboot_ends_process``: a warm reset there costs seconds of firmware
  time): after a requested restart the VM exits on that reboot and is relaunched at once,
  NVRAM untouched; the new process resets in place again.
- A VM that keeps stopping (``max_relaunches`` stops within ``window_s``) is a crash
  loop: relaunches are spaced out by a growing delay meanwhile, and past the limit the
  supervisor gives up and reports it, until the next requested restart.

Drive it with ``poll()`` (tests, the watcher's loop) or ``run(stop_event)`` in a thread.
The clock is injectable so crash-loop tests need no sleeping.
"""

from __future__ import annotations

import enum
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from guest.contract.errors import CloudbootError
from watcher.vm.state import load_record
from watcher.vm.status import VmBackend, VmState

log = structlog.get_logger(__name__)


class Action(enum.Enum):
    NONE = "none"  # running, or stopped on purpose
    RELAUNCHED = "relaunched"  # stopped on its own: started again, NVRAM untouched
    WAITING = "waiting"  # stopped on its own: relaunch delayed (backoff)
    GAVE_UP = "gave-up"  # crash loop: no more relaunches until a requested restart
    FAILED = "failed"  # the relaunch itself failed (counts as a stop)


@dataclass(frozen=True)
class Event:
    action: Action
    at: float
    detail: str


class Supervisor:
    def __init__(
        self,
        backend: VmBackend,
        *,
        max_relaunches: int = 3,
        window_s: float = 60.0,
        base_delay_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Event], None] | None = None,
        relaunch_any_stop: bool = True,
    ) -> None:
        self.backend = backend
        self.relaunch_any_stop = relaunch_any_stop
        #: The process whose next reboot ends it (reboot_ends_process), until it is gone.
        self._handoff_pid: int | None = None
        self._exit_seen: int | None = None  # the armed pid whose exit _wait already saw
        self.max_relaunches = max_relaunches
        self.window_s = window_s
        self.base_delay_s = base_delay_s
        self.clock = clock
        self.on_event = on_event
        self.events: list[Event] = []
        self._stops: deque[float] = deque()
        self._next_attempt: float | None = None
        self.gave_up = False
        self._lock = threading.Lock()

    def request_restart(self, *, reset_nvram: bool = True, stop_timeout: float = 5.0) -> None:
        """The restart we ask for (after a publish): NVRAM reset by default, history cleared."""
        with self._lock:
            self.backend.restart(reset_nvram, stop_timeout=stop_timeout)
            self._stops.clear()
            self._next_attempt = None
            self.gave_up = False
            self._hand_off_reboot()

    def hand_off_reboot(self) -> None:
        """The VM was just started for a guest agent pass: its reboot into the staged
        target goes to a fresh process where the backend does that (QEMU under TCG)."""
        with self._lock:
            self._hand_off_reboot()

    def _hand_off_reboot(self) -> None:
        self._handoff_pid = self.backend.reboot_ends_process(True)

    def release(self) -> None:
        """Supervision ends with the VM left running: its reboots stay in place again."""
        with self._lock:
            if self._handoff_pid is not None:
                self.backend.reboot_ends_process(False)
                self._handoff_pid = None

    def poll(self) -> Action:
        """Look once; relaunch a VM that stopped on its own, unless it is crash-looping."""
        with self._lock:
            if self.backend.state() is not VmState.EXITED:
                return Action.NONE
            handoff, self._handoff_pid = self._handoff_pid, None
            record = load_record(self.backend.spec.record_file)
            if handoff is not None and record is not None and record.pid == handoff:
                return self._relaunch(self.clock(), handoff=True)  # the agent's reboot
            if not self.relaunch_any_stop:
                return Action.NONE  # QEMU: the guest powered off; leave it off
            now = self.clock()
            if self.gave_up:
                return Action.GAVE_UP
            if self._next_attempt is None:  # a new stop: count it and plan the relaunch
                self._record_stop(now)
                if self.gave_up:
                    return Action.GAVE_UP
            if now < (self._next_attempt or now):
                return Action.WAITING
            return self._relaunch(now)

    def _record_stop(self, now: float) -> None:
        while self._stops and now - self._stops[0] > self.window_s:
            self._stops.popleft()
        self._stops.append(now)
        recent = len(self._stops)
        if recent > self.max_relaunches:
            self.gave_up = True
            self._emit(
                Action.GAVE_UP,
                now,
                f"VM stopped {recent} times within {self.window_s:.0f} s: crash loop, not "
                "relaunching it again until the next requested restart "
                f"(serial log: {self.backend.spec.serial_log})",
            )
            return
        # the first stop is relaunched at once; a second, third ... in a row wait longer
        self._next_attempt = now + (self.base_delay_s * 2 ** (recent - 2) if recent > 1 else 0)

    def _relaunch(self, now: float, *, handoff: bool = False) -> Action:
        self._next_attempt = None
        try:
            relaunched = self.backend.relaunch(continue_log=handoff)
        except CloudbootError as exc:
            self._emit(Action.FAILED, now, f"relaunch failed: {exc}")
            return Action.FAILED
        if relaunched is None:  # `vm down` or `vm up` got there first
            return Action.NONE
        detail = (
            "guest rebooted into its staged target: a fresh VM process boots it, NVRAM untouched"
            if handoff
            else "VM stopped on its own; relaunched, NVRAM untouched"
        )
        self._emit(Action.RELAUNCHED, now, detail, quiet=handoff)
        return Action.RELAUNCHED

    def _emit(self, action: Action, now: float, detail: str, *, quiet: bool = False) -> None:
        event = Event(action, now, detail)
        self.events.append(event)
        level = log.error if action in (Action.GAVE_UP, Action.FAILED) else log.info
        level = log.debug if quiet else level  # part of every reload: the summary has it
        level("vm supervisor", action=action.value, detail=detail)
        if self.on_event is not None:
            self.on_event(event)

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Poll until ``stop`` is set; meant for a thread next to the watcher's loop.

        A process armed for a handed-off reboot is waited on, not polled: its exit wakes
        the loop at once (``_wait``), so the second pass's QEMU starts as soon as the first
        is gone instead of up to one interval later (0.1 s per reload on average)."""
        while not self._wait(stop, interval_s):
            try:
                self.poll()
            except CloudbootError as exc:
                log.error("vm supervisor poll failed", error=str(exc))

    def _wait(self, stop: threading.Event, interval_s: float) -> bool:
        """Sleep up to ``interval_s``, less when the armed process exits; True once
        ``stop`` is set. Linux only (a pidfd); elsewhere, and with nothing armed, a sleep."""
        pid = self._handoff_pid
        if pid is None or pid == self._exit_seen or not hasattr(os, "pidfd_open"):
            return stop.wait(interval_s)  # an exit seen once is not waited on again
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (or not ours to watch): look now
            self._exit_seen = pid
            return stop.is_set()
        try:
            if select.select([fd], [], [], interval_s)[0]:  # readable: the process exited
                self._exit_seen = pid
        finally:
            os.close(fd)
        return stop.is_set()
