"""`cloudboot vm up --supervise` as a user runs it on a Mac: it stays in the foreground and
relaunches vfkit after a guest reboot (Apple VZ reports it as a stop) with NVRAM kept; Ctrl-C
/ SIGTERM ends the supervision and leaves the VM running. Through the vfkit stand-in.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CLOUDBOOT, STANDIN, vm_cli, vm_workspace, wait_for
from watcher.vm.qmp import QmpClient
from watcher.vm.state import process_cmdline

pytestmark = pytest.mark.slow


def vm_status(root: Path) -> dict[str, object]:
    status: dict[str, object] = json.loads(vm_cli(root, "status", "--json").stdout)
    return status


def test_up_supervise_relaunches_after_guest_reboot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = vm_workspace(tmp_path)
    config = root / "cloudboot.toml"
    config.write_text(config.read_text().replace('backend = "qemu"', 'backend = "vfkit"'))
    qmp_socket = root / "vm" / "standin-qmp.sock"
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    monkeypatch.setenv("VFKIT_STANDIN_QMP_SOCKET", str(qmp_socket))
    monkeypatch.setenv("VFKIT_STANDIN_REBOOT", "exit")  # the vfkit that exits on a reboot
    supervise = subprocess.Popen(
        [CLOUDBOOT, "-C", root, "--log-format", "json", "vm", "up", "--supervise"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: vm_status(root)["state"] == "running", 30, "vm up")
        pid = vm_status(root)["pid"]
        wait_for(qmp_socket.exists, 10, "the stand-in's QEMU")
        with QmpClient(qmp_socket) as qmp:  # what the guest agent's reboot(2) causes
            qmp.execute("system_reset")
        cmd: list[str] = []

        def running_again() -> bool:
            # One read of state and pid, and the argv right after it: the relaunched
            # guest may reset (so exit, and be relaunched again) before a later read.
            status = vm_status(root)
            if status["state"] == "running" and status["pid"] not in (None, pid):
                cmd[:] = process_cmdline(int(status["pid"])) or []
            return bool(cmd)

        wait_for(running_again, 30, "the relaunch")
        assert not cmd[cmd.index("--bootloader") + 1].endswith(",create")  # NVRAM kept
        supervise.send_signal(signal.SIGTERM)
        assert supervise.wait(20) == 0
        assert vm_status(root)["state"] == "running"  # supervision ends; the VM stays
    finally:
        if supervise.poll() is None:
            supervise.kill()
        vm_cli(root, "down", "--timeout", "1", check=False)
    logs = supervise.stderr.read().decode() if supervise.stderr else ""
    assert "relaunched, NVRAM untouched" in logs
