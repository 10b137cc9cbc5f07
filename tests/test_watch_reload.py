"""The loop you can see: each reload's result, read off the guest console as it grows.

A thread writes a console transcript line by line into a file, as QEMU's serial chardev
does (the agent's own line formats, guest/agent/console.py), while the watcher's
follower dates each line; the result must name the target (or the FATAL line and its
hint), and its stages must add up to the time since the edit. `cloudboot status` then
shows the kept results through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from watcher.watch.reload import (
    STAGES,
    ReloadResult,
    ReloadStart,
    ReloadWatch,
    format_result,
    verdict,
)
from watcher.watch.status import StatusBook

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"

BOOT = [
    "Linux version 6.1.0-cloud-amd64",
    "cloud-boot: 10:00:00.000001 step init 0.120s",
    "cloud-boot: 10:00:00.000002 cloud-boot-init (python) arch=amd64 plan=oci://10.0.2.2/p",
    "cloud-boot: 10:00:00.000003 python ready at 1.50s since kernel start",
    "cloud-boot: 10:00:00.000004 step network 0.300s",
    "cloud-boot: 10:00:00.000005 step parse 0.050s",
    "cloud-boot: 10:00:00.000006 target 'beta' (disk)",
    "cloud-boot: 10:00:00.000007 step read 0.200s",
    "cloud-boot: 10:00:00.000008 step write 0.100s",
    "cloud-boot: 10:00:00.000009 step nvram 0.010s",
    "cloud-boot: 10:00:00.000010 Boot0001 = cloud-boot beta; rebooting (total 0.780s)",
    "reboot: Restarting system",
    "Linux version 6.1.0-cloud-amd64",
    "CLOUDBOOT-TARGET-UP target=beta",
]
FATAL_BOOT = [
    *BOOT[:5],
    "FATAL: plan oci://10.0.2.2/p: signature does not verify",
    "hint: sign it with the key baked into boot.iso (cloudboot sign)",
]


def play(path: Path, lines: list[str], gap: float = 0.15) -> threading.Thread:
    """The guest: append lines one at a time, as the serial chardev does."""

    def write() -> None:
        with path.open("ab", buffering=0) as f:
            for line in lines:
                f.write(line.encode() + b"\r\n")
                time.sleep(gap)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def follow(tmp_path: Path, lines: list[str]) -> tuple[ReloadStart, ReloadResult, list[str]]:
    serial = tmp_path / "serial.log"
    serial.write_bytes(b"an earlier session's boot\r\nCLOUDBOOT-TARGET-UP target=alpha\r\n")
    results: list[ReloadResult] = []
    console: list[str] = []
    done = threading.Event()

    def report(result: ReloadResult) -> None:
        results.append(result)
        done.set()

    with ReloadWatch(serial, report, on_console=console.append, timeout_s=60) as watch:
        time.sleep(0.2)  # the follower has read to the end of the earlier session
        mark, restart_at = watch.mark(), time.time()
        start = ReloadStart(mark, restart_at - 0.5, restart_at, restart_at + 0.1, publish_s=0.2)
        watch.begin(start)
        play(serial, lines).join()
        assert done.wait(30), "no result reported"
    return start, results[0], console


def test_a_reload_reports_its_target_and_stages_that_add_up(tmp_path: Path) -> None:
    _, result, console = follow(tmp_path, BOOT)
    assert result.outcome == "up" and result.target == "beta"
    assert list(result.stages) == list(STAGES)
    assert sum(result.stages.values()) == pytest.approx(result.since_edit_s)
    assert result.stages["watcher"] == pytest.approx(0.5)
    assert result.stages["agent"] == pytest.approx(0.78)
    assert all(seconds > 0 for key, seconds in result.stages.items() if key != "vm")
    assert console == BOOT  # --console: every line once, none of the earlier session's
    line = format_result(result, 3)
    assert line.startswith("reload 3: target beta up, ") and "reboot -> target" in line
    assert "publish 0.2" in line and "\n" not in line


def test_a_fatal_guest_reports_the_line_and_its_hint(tmp_path: Path) -> None:
    _, result, _ = follow(tmp_path, FATAL_BOOT)
    assert result.outcome == "fatal"
    assert result.fatal == "plan oci://10.0.2.2/p: signature does not verify"
    assert result.hint is not None and "cloudboot sign" in result.hint
    text = format_result(result, 1)
    assert "guest FATAL" in text and "hint: sign it" in text


def test_an_older_target_marker_does_not_count_as_up() -> None:
    """The marker only counts after this pass staged its Boot0001 (not a stale boot's)."""
    lines = [(1.0, "CLOUDBOOT-TARGET-UP target=alpha"), (2.0, BOOT[6])]
    assert verdict(lines) is None
    assert verdict([*lines, (3.0, BOOT[10]), (4.0, "debian login: ")]) is not None


def test_a_host_staged_reload_is_up_at_the_marker_alone() -> None:
    """The host loop: no agent line announces the target; the host said what it staged."""
    lines = [(1.0, "BdsDxe: starting Boot0001"), (2.0, "CLOUDBOOT-TARGET-UP target=beta")]
    assert verdict(lines) is None
    end = verdict(lines, staged="beta")
    assert end is not None and (end.outcome, end.target, end.at) == ("up", "beta", 2.0)


def test_status_shows_the_last_reloads_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    subprocess.run([CLOUDBOOT, "init", str(root)], check=True, capture_output=True)
    book = StatusBook(root / ".cloudboot" / "status.json", watching=["plans/"])
    up = ReloadResult("up", "beta", 16.4, time.time(), 0.3, 0.0,
                      {"watcher": 0.5, "vm": 0.4, "firmware": 7.0, "target": 8.5})  # fmt: skip
    fatal = ReloadResult("fatal", None, 9.0, time.time(), fatal="no such tag", hint="push it")
    for result in [up] * 11 + [fatal]:
        book.record_reload(result)
    book.data["pid"] = 2**22 + 1  # a writer that is gone: status reads the file as history
    book.flush()
    env = {**os.environ, "NO_COLOR": "1"}
    run = [CLOUDBOOT, "-C", str(root), "status"]
    text = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout
    assert "reload 12: guest FATAL, 9.0 s after the edit: no such tag" in text
    assert "reload 11: target beta up, 16.4 s after the edit [publish 0.3, watcher 0.5" in text
    assert "reload 2:" not in text  # ten kept
    doc = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True,
                                    env=env, check=True).stdout)  # fmt: skip
    assert [r["number"] for r in doc["reloads"]] == list(range(3, 13))
    assert doc["reloads"][-1]["hint"] == "push it"
