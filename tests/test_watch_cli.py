"""`cloudboot watch` as the service manager runs it: a real process, real signals.

A datagram socket stands in for systemd's notify socket (the same protocol: one datagram
per notification), so READY/WATCHDOG/RELOADING/STOPPING are observed as systemd would
see them. The registry is real; digests are checked with skopeo.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry
from tests.helpers import PLAN, skopeo_digest, wait_for, write_signed_workspace

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def wait_for(self, line: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.seen += self.sock.recv(4096).decode().splitlines()
            if line in self.seen:
                self.seen.remove(line)
                return
        raise AssertionError(f"no {line!r} from the watcher; got {self.seen}")  # see watch.log


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


def status(root: Path) -> dict[str, object]:
    proc = subprocess.run(
        [CLOUDBOOT, "--workspace", str(root), "status", "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def runs(root: Path) -> int:
    path = root / ".cloudboot" / "status.json"
    return int(json.loads(path.read_text())["runs"]) if path.exists() else -1


def test_watch_process_notifies_publishes_reloads_and_stops(
    tmp_path: Path, registry: RunningRegistry, notify: NotifySocket
) -> None:
    root = tmp_path / "ws"
    write_signed_workspace(root, registry.address)
    env = {
        **os.environ,
        "COSIGN_PASSWORD": "pw",
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "200000",
    }
    log = tmp_path / "watch.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [CLOUDBOOT, "--log-format", "json", "--workspace", str(root), "watch", "--no-vm"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")
        wait_for(lambda: runs(root) == 1, 20, "initial publish")
        ref = f"{registry.address}/cloudboot/demo:latest"
        first = skopeo_digest(ref)

        (root / "plans" / "demo.hcl").write_text(PLAN.replace("v=1", "v=2"))
        wait_for(lambda: runs(root) == 2, 20, "publish of the edit")
        data = status(root)
        assert data["alive"] is True and data["state"] == "idle"
        plans = data["plans"]
        assert isinstance(plans, dict)
        assert plans["demo.hcl"]["digest"] == skopeo_digest(ref) != first

        # SIGHUP: the new [publish].refs applies to the next edit
        other = f"{registry.address}/elsewhere/demo:v2"
        (root / "cloudboot.toml").write_text(
            f'[registry]\nurl = "{registry.address}"\n[publish.refs]\n"demo.hcl" = "{other}"\n'
        )
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        (root / "plans" / "demo.hcl").write_text(PLAN.replace("v=1", "v=3"))
        wait_for(lambda: runs(root) == 3, 20, "publish after reload")
        assert skopeo_digest(other) is not None
        moved = skopeo_digest(other)

        # SIGHUP with a broken file: said with its line, the previous settings stay
        good = (root / "cloudboot.toml").read_text()
        (root / "cloudboot.toml").write_text(good + "[vm]\ncpu = 2\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        (root / "plans" / "demo.hcl").write_text(PLAN.replace("v=1", "v=4"))
        wait_for(lambda: runs(root) == 4, 20, "publish after a failed reload")
        assert proc.poll() is None and skopeo_digest(other) != moved  # still publishes there
        failed = [json.loads(line) for line in log.read_text().splitlines()
                  if "config reload failed" in line]  # fmt: skip
        said = failed[0]["error"] if failed else ""
        assert "cloudboot.toml:6: [vm].cpu: unknown key (did you mean 'cpus'?)" in said, failed
        (root / "cloudboot.toml").write_text(good)  # for `cloudboot status` below

        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status(root)["state"] == "stopped"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stages = [r for r in records if r.get("event") == "plan stage done"]
    assert stages and all(isinstance(r["duration_ms"], float | int) for r in stages)
    assert all("digest" in r and "subject" in r for r in stages)


def test_watch_follows_plans_replaced_or_made_again(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    """The watch on plans/ died with the directory: after ``mv plans plans.old && cp -r
    plans.old plans`` (or a checkout that removes and writes it again) the watcher kept
    running and published nothing, silently. Now it watches plans/ again, and the
    replaced or re-made tree is published as an edit."""
    root = tmp_path / "ws"
    write_signed_workspace(root, registry.address)
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    log = tmp_path / "watch.log"
    ref = f"{registry.address}/cloudboot/demo:latest"
    plans = root / "plans"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [CLOUDBOOT, "--log-format", "json", "--workspace", str(root), "watch", "--no-vm"],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
    try:
        wait_for(lambda: runs(root) == 1, 20, "initial publish")
        first = skopeo_digest(ref)
        plans.rename(root / "plans.old")
        plans.mkdir()
        (plans / "demo.hcl").write_text(PLAN.replace("v=1", "v=2"))  # the replaced tree
        wait_for(lambda: skopeo_digest(ref) not in (None, first), 20, "publish of the new tree")
        second = skopeo_digest(ref)
        (plans / "demo.hcl").write_text(PLAN.replace("v=1", "v=3"))  # an edit inside it
        wait_for(lambda: skopeo_digest(ref) != second, 20, "publish of an edit in it")
        third = skopeo_digest(ref)
        subprocess.run(["rm", "-rf", str(plans)], check=True)
        time.sleep(1)
        plans.mkdir()
        (plans / "demo.hcl").write_text(PLAN.replace("v=1", "v=4"))
        wait_for(lambda: skopeo_digest(ref) != third, 20, "publish after rm -rf and mkdir")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()
              if line.startswith("{")]  # fmt: skip
    assert "watching again" in events
    assert "the watched directory is gone; watching for it" in events


def test_a_second_watcher_on_one_workspace_is_refused(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    """A forgotten `up` in another terminal, or `up` while the agent watches: both used to
    run, each publishing, building and restarting the one VM on every edit. The second
    now stops at once, naming the first; once the first is gone (even killed), it runs."""
    root = tmp_path / "ws"
    write_signed_workspace(root, registry.address)
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    argv = [CLOUDBOOT, "--workspace", str(root)]
    first = subprocess.Popen([*argv, "watch", "--no-vm"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        wait_for(lambda: runs(root) == 1, 20, "the first watcher's initial publish")
        for second in (["watch", "--no-vm"], ["up", "--no-vm", "--no-preflight"]):
            proc = subprocess.run([*argv, *second], capture_output=True, text=True, env=env,
                                  timeout=60)  # fmt: skip
            assert proc.returncode == 1, proc.stderr
            said = f"another watcher runs in this workspace (pid {first.pid}, `cloudboot watch`"
            assert said in proc.stderr, proc.stderr
            assert proc.stdout == ""  # stopped before the registry, the key or a publish
        assert first.poll() is None
    finally:
        first.kill()  # no clean stop: the kernel drops the lock with its holder
        first.wait()
    again = subprocess.Popen([*argv, "watch", "--no-vm"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        wait_for(lambda: status(root).get("alive") is True and status(root)["pid"] == again.pid,
                 20, "a watcher after the first was killed")  # fmt: skip
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)


def test_status_without_a_watcher_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [CLOUDBOOT, "--workspace", str(tmp_path), "status"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "status.json" in proc.stderr and "cloudboot watch" in proc.stderr
