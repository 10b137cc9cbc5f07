"""bench/report.py and its parts: what the lead relies on when regenerating bench/README.md.

- a real bench (publish, against a real docker-registry) ends up as a table with its
  baseline, ratio and PASS/MISS, next to the machine it ran on;
- a bench that fails, or overruns its time, is shown as FAILED with its output, and the
  processes it started are stopped (SIGTERM unwinds its context managers);
- ``--only`` keeps the other benches' last numbers;
- the serial-line clock dates every line when it appeared, not when someone looked.
No timings are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench.readme import render
from bench.report import Bench, run_bench
from bench.results import Row
from tests.helpers import REPO, wait_for
from watcher.watch.lineclock import LineClock

REPORT = [sys.executable, str(REPO / "bench" / "report.py")]


def test_row_ratio_is_value_over_baseline_unless_given() -> None:
    assert Row(3, "m", 30.0, "ms", "base", 300.0).ratio == 0.1
    assert Row(4, "m", 2.0, "MB/s", "copy", 4.0, ratio=9.0).ratio == 9.0
    assert Row(5, "m", 1.0, "s").ratio is None
    again = Row.from_json(json.loads(json.dumps(Row(3, "m", 1.0, "s", "b", 2.0).to_json())))
    assert again == Row(3, "m", 1.0, "s", "b", 2.0)


def test_report_runs_a_real_bench_and_writes_the_readme(tmp_path: Path) -> None:
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    subprocess.run(
        [*REPORT, "--quick", "--only", "publish", "--results", results, "--readme", readme],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    text = readme.read_text()
    assert "## Machine" in text and "QEMU emulator version" in text and "load average" in text
    assert "## Issue 3: Plan publish" in text
    line = next(x for x in text.splitlines() if x.startswith("| signed publish, in-process"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "signed publish, in-process (median)"
    assert cells[1].endswith(" ms") and cells[2].startswith("oras-py push, fresh process (A): ")
    assert cells[3].endswith("x") and cells[4] == "median <= 30 ms"
    assert cells[5] in ("PASS", "**MISS**")
    bytes_line = next(x for x in text.splitlines() if "blob bytes sent" in x)
    assert "| 0 B |" in bytes_line and bytes_line.rstrip().endswith("| PASS |")
    data = json.loads(results.read_text())
    assert data["benches"]["publish"]["mode"] == "quick"
    assert data["machine"]["load_start"] and data["machine"]["load_end"]

    # --only another bench keeps publish's rows; a bench that fails is FAILED, not dropped.
    data["benches"]["guest_boot"] = {"issue": 6, "mode": "full", "date": "d", "seconds": 1.0,
                                     "error": "exit status 1\nRuntimeError: no OVMF"}  # fmt: skip
    results.write_text(json.dumps(data))
    subprocess.run(
        [*REPORT, "--quick", "--only", "plan_parse", "--results", results, "--readme", readme],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    text = readme.read_text()
    assert "## Issue 3: Plan publish" in text and "## Issue 6: Guest agent" in text
    assert "`bench/guest_boot.py`: **FAILED** (exit status 1;" in text
    assert "RuntimeError: no OVMF" in text
    assert "Benches FAILED: guest_boot." in text


def test_a_bench_that_crashes_is_failed_with_its_output(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('measuring...')\nsys.exit('disk on fire')\n")
    entry = run_bench(Bench("crash", 99, 60, 60, script), True, tmp_path)
    assert "rows" not in entry
    assert entry["error"].startswith("exit status 1")
    assert "measuring..." in entry["error"] and "disk on fire" in entry["error"]
    page = render({"benches": {"crash": entry}, "machine": {}})
    assert "`bench/crash.py`: **FAILED** (exit status 1;" in page and "disk on fire" in page


def test_a_bench_that_overruns_is_stopped_and_its_children_with_it(tmp_path: Path) -> None:
    """The timeout's SIGTERM must unwind the bench so `spawn` stops what it started."""
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "hang.py"
    script.write_text(
        textwrap.dedent(f"""
        import argparse, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from bench.results import add_report_options
        from publisher.run import spawn
        parser = argparse.ArgumentParser()
        add_report_options(parser)
        parser.parse_args()
        with spawn(["sleep", "600"]) as child:
            open({str(pidfile)!r}, "w").write(str(child.pid))
            time.sleep(600)
        """)
    )
    entry = run_bench(Bench("hang", 99, 3, 3, script), True, tmp_path)
    assert entry["error"].startswith("timed out after 3 s")
    child = int(pidfile.read_text())
    wait_for(lambda: not Path(f"/proc/{child}").exists(), what="the bench's child to go")


def test_line_clock_dates_each_line_when_it_appeared(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    stamps: list[float] = []

    def guest() -> None:
        with log.open("ab", buffering=0) as f:
            for word in ("early", "middle", "late"):
                stamps.append(time.time())
                f.write(f"line {word}\n".encode())
                time.sleep(0.4)
            f.write(b"partial without newline")

    with LineClock(log) as clock:
        writer = threading.Thread(target=guest)
        writer.start()
        seen_late, _ = clock.wait("line late", timeout=10)
        writer.join()
        time.sleep(0.2)
        # Looked up long after it appeared, a line still carries its own time.
        seen_early, match = clock.first(r"line (\w+)")
        assert match.group(1) == "early"
        assert seen_early < stamps[1] <= seen_late
        assert not clock.all("partial")  # only complete lines count
        mark = clock.size()
        with log.open("ab") as f:
            f.write(b" now\nline after mark\n")
        clock.wait("line after mark", since=mark, timeout=10)
        assert [m.string for _, m in clock.all("line", since=mark)] == ["line after mark"]
    assert os.path.getsize(log) > mark


def test_the_kexec_exit_is_split_into_load_jump_and_kernel_start() -> None:
    """The kexec loop's rows: the console lines it keys on, as the guest and kernel print
    them; the three parts add up to staged -> marker, and a missing line is an error."""
    from bench.edit_to_target import KEXEC_STAGES, kexec_split

    lines = [
        (10.0, "cloud-boot: 04:40:01.598191 Boot0001 = cloud-boot beta; rebooting (total 1.9s)"),
        (11.5, "cloud-boot: 04:40:03.100000 kexec: target loaded; starting it (no firmware pass)"),
        (11.6, "[   54.577389] kexec_core: Starting new kernel"),
        (12.4, "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists...)"),
        (15.0, "CLOUDBOOT-TARGET-UP target=beta cmdline=console=ttyS0"),
    ]
    split = kexec_split(lines, 15.0)
    assert [round(split[k], 3) for k in KEXEC_STAGES] == [1.5, 0.9, 2.6]
    assert round(sum(split.values()), 3) == 15.0 - 10.0
    with pytest.raises(SystemExit, match="kexec_core"):
        kexec_split([line for line in lines if "kexec_core" not in line[1]], 15.0)
