"""`cloudboot init` and `cloudboot registry serve` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.localregistry import free_port

CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLOUDBOOT, *args], capture_output=True, text=True, cwd=cwd)


def test_init_creates_a_loadable_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    proc = run("init", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert (ws / "cloudboot.toml").is_file()
    assert (ws / "plans/default.hcl").is_file()
    config = load_config(ws)
    assert config.source == ws / "cloudboot.toml"
    # A second init refuses to clobber the user's config.
    again = run("init", str(ws))
    assert again.returncode == 1
    assert "already a cloudboot workspace" in again.stderr


def test_bad_config_is_reported_with_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "cloudboot.toml").write_text('[registry]\nurl = "10.1.2.3:5000"\n')
    proc = run("-C", str(tmp_path), "registry", "serve")
    assert proc.returncode == 1
    assert "[registry].url" in proc.stderr
    assert "only listens on loopback" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_registry_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "cloudboot.toml").write_text(f'[registry]\nurl = "127.0.0.1:{port}"\n')
    proc = subprocess.Popen(
        [CLOUDBOOT, "-C", str(tmp_path), "registry", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "registry never answered"
                time.sleep(0.1)
        assert body == b"{}"
        assert (tmp_path / ".cloudboot/registry").is_dir()  # storage under the workspace
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
