"""The watcher's VM stage keeps Path C working on vfkit: after the guest agent reboots the
guest (Apple VZ reports that as a stop and vfkit exits), the VM is relaunched with the same
NVRAM store, so the staged Boot0001 boots; a restart the watcher asks for resets NVRAM.

Driven through the vfkit stand-in (vfkit's CLI and REST API, QEMU + OVMF underneath).
"""

from __future__ import annotations

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
from watcher.vm.state import process_cmdline
from watcher.watch.adapters import BackendVmStage

pytestmark = pytest.mark.slow


def test_guest_reboot_under_vfkit_is_relaunched_with_nvram_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    spec = make_spec(tmp_path, Backend.VFKIT)
    qmp_socket = spec.state_dir / "standin-qmp.sock"
    monkeypatch.setenv("VFKIT_STANDIN_QMP_SOCKET", str(qmp_socket))
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
        wait_for(
            lambda: backend.status().state is VmState.RUNNING and backend.status().pid != pid,
            30,
            "the supervisor to relaunch vfkit",
        )
        cmd = process_cmdline(backend.status().pid or 0) or []
        assert not cmd[cmd.index("--bootloader") + 1].endswith(",create")  # NVRAM kept
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


def test_qemu_stage_is_not_supervised(tmp_path: Path) -> None:
    """QEMU reboots guests in place; its exit means the guest powered off: leave it off."""
    stage = BackendVmStage(open_backend(make_spec(tmp_path, Backend.QEMU)))
    assert stage.supervisor is None
