"""The VM lifecycle both backends share: launch detached, find again, stop, reset NVRAM.

QEMU and vfkit differ only in their command line, their control channel (QMP vs REST)
and how a variable store is reset; those are the hooks of ``ProcessBackend``. The rest,
which is where the subtle bugs live (stale pidfiles, reused pids, a start that dies,
a stop that hangs), is written once here.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from publisher.run import launch
from watcher.vm import nvram
from watcher.vm.spec import VmError, VmSpec
from watcher.vm.state import (
    VmRecord,
    exiting,
    is_our_process,
    load_record,
    process_cmdline,
    read_pidfile,
    save_record,
    serial_tail,
)
from watcher.vm.status import VmState, VmStatus

log = structlog.get_logger(__name__)

#: How long a launch may take to bring up its control socket.
START_TIMEOUT_S = 30.0
#: After HardStop/quit, and again after SIGTERM, before the next, harder step.
FORCE_GRACE_S = 5.0
STOP_POLL_S = 0.01


class ProcessBackend(abc.ABC):
    """A VM that is one detached process, found again via pidfile + control socket."""

    #: Program names a pidfile's process must run before we signal it.
    process_names: tuple[str, ...] = ()
    #: The VM process truncates the serial log when it starts (vfkit does, QEMU appends).
    serial_truncated_at_launch = False

    def __init__(self, spec: VmSpec) -> None:
        self.spec = spec
        self._child: subprocess.Popen[bytes] | None = None
        self._lock_depth = 0

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One lifecycle change at a time per state_dir, across processes (the watcher's
        restart and a user's `vm up` must not launch two VMs); re-entrant in-process."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.spec.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.spec.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- hooks ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _launch_argv(self, reset_nvram: bool) -> list[str]:
        """Prepare the store (reset or first run) and return the command line."""

    @abc.abstractmethod
    def _wipe_nvram(self) -> None: ...

    def _clear_nvram_for_restart(self) -> None:
        """NVRAM as a restart of the loop gets it (hook: QEMU's settled copy)."""
        self._wipe_nvram()

    @abc.abstractmethod
    def _nvram_template(self) -> Path | None: ...

    @abc.abstractmethod
    def _forget_staged_target(self) -> bool:
        """Delete Boot0001 (and its BootOrder slot) from the stopped VM's store."""

    @abc.abstractmethod
    def _control_ready(self) -> bool:
        """The VM runs and answers on its control channel; raise VmError if it cannot."""

    def _not_ready_detail(self) -> str:
        """What the last readiness check saw, for the timeout error."""
        return f"did not open {self.spec.control_socket}"

    def _after_start(self) -> None:
        """The VM runs (hook: vfkit's bridge forwarder)."""
        return None

    def _after_stop(self) -> None:
        """The VM is gone (hook)."""
        return None

    @abc.abstractmethod
    def _guest_state(self) -> str | None: ...

    @abc.abstractmethod
    def _request_stop(self) -> None:
        """Ask the guest to shut down (it may ignore us)."""

    @abc.abstractmethod
    def _force_stop(self) -> None:
        """Pull the plug through the control channel; a vanished channel means stopped."""

    # -- lifecycle ----------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid of our running VM process, or None. Never a stranger's pid."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # reaped: a zombie child must not look alive
        record = load_record(self.spec.record_file)
        candidates = [read_pidfile(self.spec.pidfile), record.pid if record else None]
        for pid in candidates:
            if pid and is_our_process(
                process_cmdline(pid), self.process_names, self.spec.control_socket
            ):
                return pid
        return None

    def up(self, *, reset_nvram: bool = False) -> VmStatus:
        """Start the VM unless it runs already; ``reset_nvram`` needs it stopped."""
        with self._exclusive():
            return self._up(reset_nvram)

    def relaunch(self, *, continue_log: bool = False) -> VmStatus | None:
        """Start a VM that stopped on its own, NVRAM untouched; None if someone meanwhile
        asked for it to stay down (`vm down`) or started it again. ``continue_log``: the
        new process goes on with the last one's boot (a reboot handed off to a fresh
        process), so `vm console` and `vm status` keep showing it from where it began."""
        with self._exclusive():
            record = load_record(self.spec.record_file)
            if record is None or record.desired != "running" or self.pid() is not None:
                return None
            return self._up(False, continues=record.serial_offset if continue_log else None)

    def reboot_ends_process(self, on: bool) -> int | None:
        """Whether the guest's next reboot ends the VM process (for a supervisor to start a
        fresh one) instead of resetting it in place; the pid it now applies to, or None
        where the backend does not do this (the default: vfkit, where VZ decides)."""
        return None

    def _up(self, reset_nvram: bool, *, continues: int | None = None) -> VmStatus:
        """``continues``: the console offset of the boot this launch goes on with (a reboot
        handed off to a fresh process), kept in the record; such a start is part of every
        reload, so it logs at debug (`up`'s summary line covers it)."""
        running = self.pid()
        if running is not None:
            if reset_nvram:
                raise VmError(
                    f"refusing to reset NVRAM: the VM is running (pid {running}); "
                    "use `cloudboot vm restart --reset-nvram`"
                )
            self._set_desired("running")
            log.info("vm already running", pid=running)
            return self.status()
        self.spec.check_files()
        self._wait_exited()
        for directory in {self.spec.state_dir, self.spec.nvram.parent, self.spec.serial_log.parent}:
            directory.mkdir(parents=True, exist_ok=True)
        for stale in (self.spec.pidfile, self.spec.control_socket):
            stale.unlink(missing_ok=True)
        argv = self._launch_argv(reset_nvram)
        serial_offset = continues
        if serial_offset is None:
            serial_offset = (
                0 if self.serial_truncated_at_launch else file_size(self.spec.serial_log)
            )
        log_offset = file_size(self.spec.process_log)
        started = time.time()
        proc = launch(argv, log_file=self.spec.process_log)
        self._child = proc
        self._wait_ready(proc, log_offset)
        save_record(
            self.spec.record_file,
            VmRecord(
                backend=self.spec.backend.value,
                pid=proc.pid,
                started_at=started,
                desired="running",
                serial_offset=serial_offset,
                nvram_reset_at_launch=reset_nvram,
            ),
        )
        (log.info if continues is None else log.debug)(
            "vm started", backend=self.spec.backend.value, pid=proc.pid, reset=reset_nvram
        )
        self._after_start()
        return self.status()

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise VmError(
                    f"{self.spec.backend.value} exited with status {code} while starting"
                    f"{self._log_excerpt(log_offset)}"
                )
            try:
                if read_pidfile(self.spec.pidfile) == proc.pid and self._control_ready():
                    return
            except VmError as exc:
                self._kill(proc.pid)
                raise VmError(f"{exc}{self._log_excerpt(log_offset)}") from None
            time.sleep(0.02)
        self._kill(proc.pid)
        raise VmError(
            f"{self.spec.backend.value} {self._not_ready_detail()} within "
            f"{START_TIMEOUT_S:.0f} s{self._log_excerpt(log_offset)}"
        )

    def _log_excerpt(self, offset: int) -> str:
        try:
            with open(self.spec.process_log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        lines = text.splitlines()[-8:]
        where = f" (log: {self.spec.process_log})"
        return where + (":\n  " + "\n  ".join(lines) if lines else "")

    def down(self, timeout: float = 5.0) -> bool:
        """Stop the VM: polite stop, then hard stop, then signals. False if not running."""
        with self._exclusive():
            return self._down(timeout)

    def _down(self, timeout: float) -> bool:
        self._set_desired("stopped")
        pid = self.pid()
        if pid is None:
            self._after_stop()
            return False
        log.info("vm stopping", pid=pid)
        self._request_stop()
        if not self.wait_stopped(timeout):
            log.info("vm ignored the stop request; forcing", pid=pid, waited_s=timeout)
            self._force_stop()
            if not self.wait_stopped(FORCE_GRACE_S):
                self._kill(pid)
        self._reap_child()
        self.spec.control_socket.unlink(missing_ok=True)
        self._after_stop()
        return True

    def _reap_child(self) -> None:
        """Wait for our own child to be gone, not just to look gone.

        A VM process stops naming its control socket in /proc while it is still tearing
        down (closing disk images, releasing QEMU's image locks); a relaunch right then could
        race it, so when we launched it we wait for its exit status too.
        """
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.wait(FORCE_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("vm process still exiting", pid=child.pid)
            self._child = child

    def _wait_exited(self) -> None:
        """Let a last VM process that is still exiting close its files (its disk images'
        locks) before the next one opens them; bounded, as a stuck exit is the kernel's."""
        record = load_record(self.spec.record_file)
        deadline = time.monotonic() + FORCE_GRACE_S
        for pid in {read_pidfile(self.spec.pidfile), record.pid if record else None} - {None}:
            while pid is not None and exiting(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def _kill(self, pid: int) -> None:
        """SIGTERM, then SIGKILL; each only after checking the pid is still our VM."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not is_our_process(
                process_cmdline(pid), self.process_names, self.spec.control_socket
            ):
                return
            log.warning("signalling vm", pid=pid, signal=sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if self.wait_stopped(FORCE_GRACE_S):
                return

    def wait_stopped(self, timeout: float) -> bool:
        """Poll for the VM's end; 10 ms, as a restart waits for it on the loop's path."""
        deadline = time.monotonic() + timeout
        while self.pid() is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(STOP_POLL_S)
        return True

    def restart(self, reset_nvram: bool, *, stop_timeout: float = 5.0) -> VmStatus:
        """Stop, optionally reset NVRAM (the guest re-stages), start again."""
        with self._exclusive():
            self._down(stop_timeout)
            return self._up(reset_nvram)

    def restart_staged(
        self, stage: Callable[[], str], *, stop_timeout: float = 5.0
    ) -> tuple[VmStatus, str | None]:
        """Stop, reset NVRAM, let ``stage`` write the target into the stopped VM's files
        (the host loop, ``watcher.watch.hoststage``), start; with the name it staged. A
        staging error is logged and the VM starts reset: the guest stages instead."""
        with self._exclusive():
            self._down(stop_timeout)
            self._clear_nvram_for_restart()
            try:
                staged: str | None = stage()
            except CloudbootError as exc:
                log.warning("host staging failed; the guest stages instead", error=str(exc))
                self._clear_nvram_for_restart()
                staged = None
            return self._up(False), staged

    def reset_nvram(self) -> None:
        with self._exclusive():
            self._reset_nvram()

    def _reset_nvram(self) -> None:
        self._refuse_while_running("reset NVRAM", " or use `cloudboot vm restart --reset-nvram`")
        self._wipe_nvram()
        log.info("nvram reset", store=str(self.spec.nvram))

    def forget_staged_target(self) -> bool:
        """Back to the menu keeping the rest of the store (`vm reset-nvram --menu`); True
        when Boot0001 or its BootOrder slot was there. Under the lock, so no `vm up` or
        watcher restart starts the firmware while the file is rewritten."""
        with self._exclusive():
            self._refuse_while_running("edit NVRAM")
            if not self.spec.nvram.exists():
                return False
            changed = self._forget_staged_target()
            log.info("nvram: staged target forgotten", store=str(self.spec.nvram),
                     changed=changed)  # fmt: skip
            return changed

    def _refuse_while_running(self, what: str, alternative: str = "") -> None:
        running = self.pid()
        if running is not None:
            raise VmError(
                f"refusing to {what}: the VM is running (pid {running}); "
                f"stop it first (`cloudboot vm down`){alternative}"
            )

    def state(self) -> VmState:
        """Just the state: cheap enough for a supervisor polling every second."""
        return self._state(self.pid(), load_record(self.spec.record_file))

    @staticmethod
    def _state(pid: int | None, record: VmRecord | None) -> VmState:
        if pid is not None:
            return VmState.RUNNING
        if record is not None and record.desired == "running":
            return VmState.EXITED
        return VmState.STOPPED

    def status(self) -> VmStatus:
        pid = self.pid()
        record = load_record(self.spec.record_file)
        state = self._state(pid, record)
        uptime = None
        if pid is not None and record is not None and record.pid == pid:
            uptime = max(0.0, time.time() - record.started_at)
        return VmStatus(
            state=state,
            pid=pid,
            uptime_s=uptime,
            nvram=nvram.describe(self.spec.nvram, self._nvram_template()),
            serial_tail=serial_tail(self.spec.serial_log, record.serial_offset if record else 0),
            backend=self.spec.backend.value,
            guest_state=self._guest_state() if pid is not None else None,
        )

    def _set_desired(self, desired: str) -> None:
        record = load_record(self.spec.record_file)
        if record is not None and record.desired != desired:
            save_record(self.spec.record_file, replace(record, desired=desired))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
