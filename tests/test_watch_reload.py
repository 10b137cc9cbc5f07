"""The loop you can see: each reload's result, read off the guest console as it grows.

A thread writes a console transcript line by line into a file, as QEMU's serial chardev
does (the agent's own line formats, guest/agent/console.py), while the watcher's
follower dates each line; the result must name the target (or the FATAL line and its
hint), and its stages must add up to the time since the edit. `cloudboot status` then
shows the kept results through the CLI.
"""

from __future__ import annotations

import dataclasses
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
    QuietConsole,
    ReloadResult,
    ReloadStart,
    ReloadWatch,
    format_quiet,
    format_result,
    verdict,
)
from watcher.watch.status import StatusBook, reload_from_json

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


#: A plan edit whose target cannot boot: its kernel finds no init and no root.
PANIC_BOOT = [
    *BOOT[:13],
    "[    2.101] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
    "[    2.102] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---",
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


def follow(
    tmp_path: Path,
    lines: list[str],
    *,
    quiet: list[QuietConsole] | None = None,
    timeout_s: float = 60,
    quiet_s: float = 60,
) -> tuple[ReloadStart, ReloadResult, list[str]]:
    serial = tmp_path / "serial.log"
    serial.write_bytes(b"an earlier session's boot\r\nCLOUDBOOT-TARGET-UP target=alpha\r\n")
    results: list[ReloadResult] = []
    console: list[str] = []
    done = threading.Event()

    def report(result: ReloadResult) -> None:
        results.append(result)
        done.set()

    on_quiet = quiet.append if quiet is not None else None
    with ReloadWatch(serial, report, on_console=console.append, on_quiet=on_quiet,
                     timeout_s=timeout_s, quiet_s=quiet_s) as watch:  # fmt: skip
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


def test_a_target_kernel_panic_ends_the_reload_at_once(tmp_path: Path) -> None:
    """A valid plan edit whose target cannot boot: the panic line, not a 600 s wait."""
    _, result, _ = follow(tmp_path, PANIC_BOOT)
    assert (result.outcome, result.target) == ("panic", "beta")
    assert result.fatal == "VFS: Unable to mount root fs on unknown-block(0,0)"
    assert result.since_edit_s < 30
    text = format_result(result, 4)
    assert text.startswith("reload 4: kernel panic, ") and "Unable to mount root fs" in text
    assert "hint: the target's kernel panicked" in text and "root=" in text


def test_a_bootstrap_panic_points_at_the_recipe_not_the_plan() -> None:
    lines = [(1.0, BOOT[0]), (2.0, "Kernel panic - not syncing: No working init found.")]
    end = verdict(lines)
    assert end is not None and (end.outcome, end.target) == ("panic", None)
    assert end.hint is not None and "kernel/recipe.toml" in end.hint


def test_a_stalled_boot_is_said_once_and_its_timeout_names_the_last_line(tmp_path: Path) -> None:
    """The console stops mid-kernel (as a TCG boot once did): one notice after quiet_s
    while the watch goes on, then a result that says where the console stopped."""
    stalled = [*BOOT[:12], "[    1.094727] IP idents hash table entries: 16384"]
    quiet: list[QuietConsole] = []
    _, result, _ = follow(tmp_path, stalled, quiet=quiet, timeout_s=4.0, quiet_s=1.0)
    assert len(quiet) == 1 and quiet[0].last_line == stalled[-1]
    assert 1.0 <= quiet[0].quiet_s < 2.0
    assert "quiet for 1 s after '[    1.094727] IP idents" in format_quiet(quiet[0])
    assert result.outcome == "timeout" and result.last_line == stalled[-1]
    assert result.quiet_s is not None and 1.0 < result.quiet_s < 4.0
    text = format_result(result, 5)
    assert text.startswith("reload 5: no target up ")
    assert "the console has been quiet for" in text and "IP idents hash table" in text
    kept = json.loads(json.dumps(result.to_json()))
    assert kept["last_line"] == stalled[-1] and kept["quiet_s"] == round(result.quiet_s, 3)


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


def test_ups_first_boot_is_timed_from_up_not_from_an_edit(tmp_path: Path) -> None:
    """`up`'s first boot has no edit behind it: it says so, its first stage is the set-up
    (key, registry, publish, build), and `status` reads it back the same way."""
    first = ReloadResult("up", "alpha", 20.2, time.time(), 0.3, 0.0,
                         {"watcher": 2.6, "vm": 0.1, "target": 6.9}, first=True)  # fmt: skip
    line = format_result(first, 1)
    assert line.startswith("reload 1: target alpha up, 20.2 s after `up` started [")
    assert "setup 2.6" in line and "watcher" not in line
    later = format_result(dataclasses.replace(first, first=False), 2)
    assert "after the edit [publish 0.3, watcher 2.6" in later
    book = StatusBook(tmp_path / "status.json", watching=["plans/"])
    book.record_reload(first)
    book.flush()
    kept = json.loads((tmp_path / "status.json").read_text())["reloads"][-1]
    assert kept["first"] is True and "`up` started" in format_result(reload_from_json(kept), 1)


def test_a_stage_below_a_tenth_keeps_its_hundredths() -> None:
    """A 40 ms publish reads "publish 0.04", not "publish 0.0" (as if nothing was
    published); a stage that did not run still reads 0.0."""
    result = ReloadResult("up", "beta", 15.3, time.time(), 0.04, 0.0,
                          {"watcher": 0.1, "menu": 0.0, "target": 6.2})  # fmt: skip
    line = format_result(result, 2)
    assert "[publish 0.04, watcher 0.1, menu 0.0, reboot -> target 6.2 s]" in line
