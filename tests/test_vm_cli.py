"""`cloudboot vm ...` as a user runs it: every command its own process, one real VM.

Proves the VM outlives the CLI call that started it and that later calls find it again
(status, console, restart, down), that NVRAM reset is refused while it runs, and that
errors are one clear line with a non-zero exit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from tests.helpers import vm_cli, vm_workspace, wait_for
from watcher.vm.firmware import find_firmware


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def test_up_without_build_names_the_missing_disk(tmp_path: Path) -> None:
    proc = vm_cli(tmp_path, "up", check=False)
    assert proc.returncode == 1
    assert "error: [build].iso: disk not found:" in proc.stderr.decode()
    assert "cloudboot build" in proc.stderr.decode()


def test_status_of_a_vm_never_started(tmp_path: Path) -> None:
    status = json.loads(out(vm_cli(vm_workspace(tmp_path), "status", "--json")))
    assert status["state"] == "stopped" and status["pid"] is None
    assert status["nvram"]["exists"] is False


@pytest.mark.slow
def test_vm_commands_across_processes(tmp_path: Path) -> None:
    root = vm_workspace(tmp_path)
    template = find_firmware(Arch.host()).vars_template
    try:
        assert "vm running (pid" in out(vm_cli(root, "up"))
        status = json.loads(out(vm_cli(root, "status", "--json")))
        assert status["state"] == "running" and status["backend"] == "qemu"
        assert status["guest_state"] == "running" and status["uptime_s"] >= 0
        assert status["nvram"]["path"] == str(root / "vm/nvram.fd")

        refused = vm_cli(root, "reset-nvram", check=False)
        assert refused.returncode == 1
        assert refused.stderr.decode().startswith("error: refusing to reset NVRAM")

        wait_for(
            lambda: "BdsDxe" in out(vm_cli(root, "console", "--no-follow")), 60, "serial output"
        )
        text = out(vm_cli(root, "status"))
        assert "state:   running (running)" in text and "serial (last boot):" in text

        pid = status["pid"]
        assert "NVRAM reset" in out(vm_cli(root, "restart", "--reset-nvram", "--timeout", "1"))
        status = json.loads(out(vm_cli(root, "status", "--json")))
        assert status["state"] == "running" and status["pid"] != pid

        assert out(vm_cli(root, "down", "--timeout", "1")).strip() == "vm stopped"
        assert json.loads(out(vm_cli(root, "status", "--json")))["state"] == "stopped"
        assert out(vm_cli(root, "down")).strip() == "vm was not running"
        assert "nvram reset" in out(vm_cli(root, "reset-nvram"))
        assert (root / "vm/nvram.fd").read_bytes() == template.read_bytes()
    finally:
        vm_cli(root, "down", "--timeout", "1", check=False)
