"""The background agent: systemd unit and launchd plist, and `cloudboot agent ...`.

The unit is checked by systemd itself (``systemd-analyze verify``, system and user mode,
no warnings allowed); the plist is parsed with plistlib (plutil is macOS only). The
install/uninstall commands run as real processes with HOME pointed at a temp dir.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from watcher.watch.service import AgentSpec, cloudboot_argv, render_plist, render_unit

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"

#: The specs the checked-in examples in systemd/ are rendered from.
EXAMPLE_UNIT = AgentSpec(
    ("/home/me/cloudboot/.venv/bin/cloudboot",), Path("/home/me/cloudboot"), Path("/unused")
)
EXAMPLE_PLIST = AgentSpec(
    ("/Users/me/cloudboot/.venv/bin/cloudboot",),
    Path("/Users/me/cloudboot"),
    Path("/Users/me/Library/Logs/cloudboot"),
)


def verify_unit(path: Path, *, user: bool, runtime: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    argv = [analyze, *(["--user"] if user else []), "verify", "--man=no", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("user", [False, True], ids=["system-mode", "user-mode"])
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path, user: bool) -> None:
    workspace = tmp_path / "my workspace"  # a space must survive ExecStart quoting
    workspace.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "units" / "cloudboot-watch.service"
    unit.parent.mkdir()
    unit.write_text(render_unit(AgentSpec(cloudboot_argv(), workspace, tmp_path)))
    proc = verify_unit(unit, user=user, runtime=runtime)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # systemd only warns on bad values


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose command does not exist is rejected."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "cloudboot-watch.service"
    unit.write_text(render_unit(AgentSpec(("/nonexistent/cloudboot",), tmp_path, tmp_path)))
    proc = verify_unit(unit, user=False, runtime=runtime)
    assert proc.returncode != 0
    assert "/nonexistent/cloudboot" in proc.stderr


def test_unit_is_type_notify_with_watchdog_and_json_logs() -> None:
    text = render_unit(EXAMPLE_UNIT)
    lines = set(text.splitlines())
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=30", "KillMode=mixed"):
        assert line in lines
    exec_start = next(x for x in lines if x.startswith("ExecStart="))
    assert exec_start.endswith("--log-format json --workspace /home/me/cloudboot watch")


def test_checked_in_examples_match_the_renderer() -> None:
    assert (REPO / "systemd" / "cloudboot-watch.service").read_text() == render_unit(EXAMPLE_UNIT)
    assert (REPO / "systemd" / "dev.cloudboot.watch.plist").read_bytes() == render_plist(
        EXAMPLE_PLIST
    )


def test_plist_parses_and_keeps_the_watcher_alive() -> None:
    doc = plistlib.loads((REPO / "systemd" / "dev.cloudboot.watch.plist").read_bytes())
    assert doc["Label"] == "dev.cloudboot.watch"
    assert doc["ProgramArguments"] == [
        "/Users/me/cloudboot/.venv/bin/cloudboot",
        "--log-format",
        "json",
        "--workspace",
        "/Users/me/cloudboot",
        "watch",
    ]
    assert doc["KeepAlive"] == {"SuccessfulExit": False}
    assert doc["RunAtLoad"] is True
    assert doc["StandardErrorPath"] == "/Users/me/Library/Logs/cloudboot/watch.log"
    assert "/opt/homebrew/bin" in doc["EnvironmentVariables"]["PATH"]  # where vfkit lives


def agent(home: Path, workspace: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME",)}
    full_env.update({"HOME": str(home), "XDG_RUNTIME_DIR": str(home / "no-runtime"), **env})
    return subprocess.run(
        [str(CLOUDBOOT), "--workspace", str(workspace), "agent", *args],
        capture_output=True,
        text=True,
        env=full_env,
    )


def test_agent_install_status_uninstall_systemd(tmp_path: Path) -> None:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    proc = agent(home, workspace, "install", "--kind", "systemd")
    assert proc.returncode == 0, proc.stderr
    unit = home / ".config" / "systemd" / "user" / "cloudboot-watch.service"
    assert f"--workspace {workspace} watch" in unit.read_text()
    assert "systemctl --user daemon-reload" in proc.stdout  # how to start it by hand
    proc = agent(home, workspace, "status", "--kind", "systemd", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"installed": true' in proc.stdout
    proc = agent(home, workspace, "uninstall", "--kind", "systemd")
    assert proc.returncode == 0, proc.stderr
    assert not unit.exists()


def test_agent_install_respects_xdg_config_home(tmp_path: Path) -> None:
    home, workspace, xdg = tmp_path / "home", tmp_path / "ws", tmp_path / "xdg"
    home.mkdir()
    workspace.mkdir()
    proc = agent(home, workspace, "install", "--kind", "systemd", XDG_CONFIG_HOME=str(xdg))
    assert proc.returncode == 0, proc.stderr
    assert (xdg / "systemd" / "user" / "cloudboot-watch.service").is_file()
    assert not (home / ".config").exists()


def test_agent_install_launchd_writes_a_parseable_plist(tmp_path: Path) -> None:
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    proc = agent(home, workspace, "install", "--kind", "launchd")
    assert proc.returncode == 0, proc.stderr
    path = home / "Library" / "LaunchAgents" / "dev.cloudboot.watch.plist"
    doc = plistlib.loads(path.read_bytes())
    assert doc["ProgramArguments"][-3:] == ["--workspace", str(workspace), "watch"]
    assert (home / "Library" / "Logs" / "cloudboot").is_dir()
    assert "launchctl bootstrap" in proc.stdout
