"""The watcher's VM stage keeps Path C working. vfkit: should a guest reboot surface as
a stop (vfkit exits; the stand-in's exit-on-reboot mode), the VM is relaunched with the same
NVRAM store, so the staged Boot0001 boots; a restart the watcher asks for resets NVRAM.
QEMU under TCG: only the agent's reboot after a restart goes to a fresh process (a warm
reset there costs seconds of firmware time), and only while the watcher runs.

Driven through the vfkit stand-in (vfkit's CLI and REST API, QEMU + OVMF underneath) and
QEMU itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from publisher.config import Backend
from tests.helpers import (
    STANDIN,
    STOP_TIMEOUT,
    has_marker,
    make_spec,
    set_marker,
    wait_for,
)
from watcher.vm import VmState, open_backend
from watcher.vm.qmp import QmpClient
from watcher.vm.state import load_record, process_cmdline
from watcher.vm.supervisor import Supervisor
from watcher.watch.adapters import BackendVmStage

pytestmark = pytest.mark.slow


def test_guest_reboot_under_vfkit_is_relaunched_with_nvram_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    spec = make_spec(tmp_path, Backend.VFKIT)
    qmp_socket = spec.state_dir / "standin-qmp.sock"
    monkeypatch.setenv("VFKIT_STANDIN_QMP_SOCKET", str(qmp_socket))
    monkeypatch.setenv("VFKIT_STANDIN_REBOOT", "exit")  # VZ reporting a reboot as a stop
    backend = open_backend(spec)
    stage = BackendVmStage(backend, stop_timeout_s=STOP_TIMEOUT)
    assert stage.supervisor is not None  # vfkit: supervised by default
    try:
        assert stage.restart() == "running"  # what the watcher does after a publish
        assert stage.started_by_watcher
        # Stage a "Boot0001" as the agent would (with the VM briefly stopped, so the
        # firmware cannot overwrite the store while we write it).
        backend.down(STOP_TIMEOUT)
        set_marker(spec.nvram)
        pid = backend.up().pid
        with QmpClient(qmp_socket) as qmp:  # the reboot the guest agent ends with
            qmp.execute("system_reset")
        relaunched: list[str] = []

        def relaunched_argv() -> bool:
            # Status and argv are read together: the relaunched guest may itself reset (and
            # so exit and be relaunched again) between two separate reads.
            status = backend.status()
            if status.state is not VmState.RUNNING or status.pid in (None, pid):
                return False
            relaunched[:] = process_cmdline(status.pid or 0) or []
            return bool(relaunched)

        wait_for(relaunched_argv, 30, "the supervisor to relaunch vfkit")
        bootloader = relaunched[relaunched.index("--bootloader") + 1]
        assert not bootloader.endswith(",create")  # NVRAM kept
        backend.down(STOP_TIMEOUT)
        assert has_marker(spec.nvram)
        backend.up()
        # The restart the watcher asks for (a new plan) resets NVRAM.
        stage.restart()
        backend.down(STOP_TIMEOUT)
        assert not has_marker(spec.nvram)
    finally:
        stage.shutdown()
        backend.down(STOP_TIMEOUT)
    assert backend.status().state is not VmState.RUNNING


def test_qemu_hands_the_agents_reboot_to_a_fresh_process_and_nothing_else(
    tmp_path: Path,
) -> None:
    """QEMU under TCG: after a restart the watcher asks for, the guest's reboot (the agent's,
    into its staged target) ends the process and the supervisor starts a fresh one from the
    same NVRAM store, the console going on from the same offset. The new process resets in
    place again, and an exit of its own (a guest poweroff, a crash) is left alone."""
    spec = make_spec(tmp_path, Backend.QEMU)
    backend = open_backend(spec)
    stage = BackendVmStage(backend, stop_timeout_s=STOP_TIMEOUT)
    assert stage.supervisor is not None and not stage.supervisor.relaunch_any_stop
    try:
        assert stage.restart() == "running"
        first = load_record(spec.record_file)
        assert first is not None and first.nvram_reset_at_launch
        with QmpClient(spec.control_socket) as qmp:  # the reboot the guest agent ends with
            qmp.execute("system_reset")

        # The new process names itself (pidfile) a moment before the backend records it:
        # wait for the record too, not just for a running pid.
        def relaunched() -> bool:
            record = load_record(spec.record_file)
            status = backend.status()
            return (
                status.state is VmState.RUNNING
                and status.pid not in (None, first.pid)
                and record is not None
                and record.pid == status.pid
            )

        wait_for(relaunched, 30, "the supervisor to start a fresh QEMU for the second pass")
        second = load_record(spec.record_file)
        assert second is not None and not second.nvram_reset_at_launch  # NVRAM untouched
        assert second.serial_offset == first.serial_offset  # one boot, as `vm console` shows it
        # The fresh process reboots in place: same pid, still running.
        with QmpClient(spec.control_socket) as qmp:
            qmp.execute("system_reset")
        time.sleep(1.0)
        assert backend.status().pid == second.pid
        # An exit of its own is not relaunched (QEMU: the guest powered off).
        os.kill(second.pid, signal.SIGKILL)
        assert backend.wait_stopped(10)
        time.sleep(1.0)
        assert backend.status().state is VmState.EXITED
    finally:
        stage.shutdown()
        backend.down(STOP_TIMEOUT)


def test_qemu_reboot_stays_in_place_after_the_watcher_lets_go(tmp_path: Path) -> None:
    """A VM the watcher did not start keeps running when the watcher stops; its reboots
    must then stay in place, with no supervisor left to start a new process."""
    spec = make_spec(tmp_path, Backend.QEMU)
    backend = open_backend(spec)
    pid = backend.up().pid  # `cloudboot vm up` in another terminal
    stage = BackendVmStage(backend, stop_timeout_s=STOP_TIMEOUT)
    try:
        stage.restart()  # the watcher restarts it after a publish: a new process, armed
        pid = backend.status().pid
        stage.shutdown()  # the watcher stops; the VM stays
        with QmpClient(spec.control_socket) as qmp:
            qmp.execute("system_reset")
        time.sleep(1.5)
        assert backend.status().state is VmState.RUNNING and backend.status().pid == pid
    finally:
        backend.down(STOP_TIMEOUT)


def test_the_handed_off_exit_wakes_the_supervisor_at_once(tmp_path: Path) -> None:
    """The supervisor waits on the armed process rather than polling it: with a poll
    interval of a minute, the fresh QEMU still starts right after the reboot ends the old
    one (a poll would only see it a minute later, after this test's deadline)."""
    spec = make_spec(tmp_path, Backend.QEMU)
    backend = open_backend(spec)
    supervisor = Supervisor(backend, relaunch_any_stop=False)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop, 60.0), daemon=True)
    try:
        first = backend.up().pid
        supervisor.hand_off_reboot()
        thread.start()
        with QmpClient(spec.control_socket) as qmp:  # the reboot the guest agent ends with
            qmp.execute("system_reset")
        wait_for(
            lambda: backend.status().pid not in (None, first),
            20,
            "the supervisor to start the fresh QEMU without waiting out its poll interval",
        )
    finally:
        stop.set()
        thread.join(70)
        backend.down(STOP_TIMEOUT)
