"""Run every bench script and regenerate bench/README.md from their numbers.

One command for the table the issues ask for: each number next to its baseline or floor
as a ratio, its target and PASS/MISS, with the machine it ran on. Each bench runs in its
own subprocess (``bench/<name>.py --json PATH [--quick]``) with a time limit, so one that
fails or hangs is shown as FAILED with the tail of its output and the rest still run.

The collected results are kept in bench/results.json and the README is rendered from that
file alone, so ``--only NAME`` re-runs some benches and keeps the others' last numbers
(each table says when and in which mode its numbers were taken).

Run: .venv/bin/python bench/report.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from bench.readme import render  # noqa: E402
from bench.results import load_rows, write_json_atomic, write_text_atomic  # noqa: E402
from guest.contract.arch import Arch  # noqa: E402
from publisher.run import CommandError, ToolMissingError, run, spawn  # noqa: E402
from watcher.vm.qemu import kvm_usable  # noqa: E402

BENCH_DIR = REPO / "bench"
RESULTS = BENCH_DIR / "results.json"
README = BENCH_DIR / "README.md"


@dataclass(frozen=True)
class Bench:
    """A bench script, the issue its numbers belong to, and how long it may take."""

    name: str
    issue: int
    quick_timeout_s: float
    full_timeout_s: float
    path: Path | None = None  # default: bench/<name>.py

    @property
    def script(self) -> Path:
        return self.path or BENCH_DIR / f"{self.name}.py"


# Cheap ones first, so a quick look at a half-finished run already says something.
BENCHES = (
    Bench("publish", 3, 300, 600),
    Bench("fleet", 17, 900, 1200),  # 1,000 plans: validate, publish cold and warm
    Bench("iso_build", 4, 600, 1200),  # + full builds vs cmdline edits
    Bench("vm_restart", 5, 300, 600),
    Bench("plan_parse", 6, 300, 600),
    Bench("watch_latency", 7, 600, 1200),
    Bench("watch_idle", 7, 600, 900),
    Bench("guest_boot", 6, 900, 900),
    Bench("disk_read", 15, 1500, 2400),  # ext4, Fedora btrfs, RHEL xfs, btrfs RAID1 boots
    Bench("volume_read", 15, 1200, 1800),
    Bench("zfs_read", 15, 2400, 3600),  # a cold cache first builds the zfs modules
    Bench("edit_to_target", 8, 2100, 4800),  # three loops: QEMU two-pass, kexec, macOS-shaped
    Bench("soak", 17, 900, 3600),  # the watcher as a service: 10,000 edits, registry restarts
    Bench("canary", 17, 1500, 2400),  # canary wall time per plan vs one bare boot (QEMU TCG)
)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (load averages are added around the run)."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "kvm": kvm_usable(Arch.X86_64),
        "git": _first_line(["git", "describe", "--always", "--dirty", "--abbrev=12"]),
    }


def _first_line(argv: list[str]) -> str:
    try:
        out = run(argv, cwd=REPO).stdout.decode(errors="replace")
    except (CommandError, ToolMissingError) as exc:
        return f"unknown ({exc})"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _tail(log: Path, lines: int = 12) -> str:
    """The last non-blank lines of a bench's output: enough to see why it failed."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def run_bench(bench: Bench, quick: bool, workdir: Path) -> dict[str, Any]:
    """Run one bench in its own process; never raises for the bench's own failures."""
    out_json = workdir / f"{bench.name}.json"
    log = workdir / f"{bench.name}.log"
    argv: list[str | Path] = [sys.executable, bench.script, "--json", out_json]
    argv += ["--quick"] if quick else []
    timeout = bench.quick_timeout_s if quick else bench.full_timeout_s
    entry: dict[str, Any] = {
        "issue": bench.issue,
        "mode": "quick" if quick else "full",
        "date": _now(),
    }
    start = time.monotonic()
    timed_out = False
    # grace: on a timeout the bench gets SIGTERM and time to stop its registry and QEMU.
    with spawn(argv, stdout=log, grace=30, env={"PYTHONUNBUFFERED": "1"}, cwd=REPO) as proc:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
    entry["seconds"] = round(time.monotonic() - start, 1)
    if timed_out:
        entry["error"] = f"timed out after {timeout:.0f} s\n{_tail(log)}"
    elif proc.returncode != 0:
        entry["error"] = f"exit status {proc.returncode}\n{_tail(log)}"
    elif not out_json.exists():
        entry["error"] = f"exited 0 but wrote no rows\n{_tail(log)}"
    else:
        entry["rows"] = [row.to_json() for row in load_rows(out_json)]
    return entry


def load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"benches": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs per bench")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=[b.name for b in BENCHES],
        help="run only these benches; the others keep their last results",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    selected = [b for b in BENCHES if not args.only or b.name in args.only]

    results = load_results(args.results)
    machine = machine_info()
    machine["load_start"] = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cloudboot-bench-"))
    for bench in selected:
        print(f"[report] {bench.name} ({'quick' if args.quick else 'full'}) ...", file=sys.stderr)
        entry = run_bench(bench, args.quick, workdir)
        status = "FAILED" if "error" in entry else "ok"
        print(f"[report] {bench.name}: {status} in {entry['seconds']:.0f} s", file=sys.stderr)
        results["benches"][bench.name] = entry
    machine["load_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["date"] = _now()
    machine["run_seconds"] = round(time.monotonic() - started, 1)
    machine["run"] = ("quick" if args.quick else "full") + (
        f", only {' '.join(b.name for b in selected)}" if args.only else ""
    )
    results["machine"] = machine
    ran = results["benches"]
    results["benches"] = {b.name: ran[b.name] for b in BENCHES if b.name in ran}
    write_json_atomic(args.results, results)
    write_text_atomic(args.readme, render(results))
    print(f"[report] wrote {args.readme} and {args.results}; logs in {workdir}", file=sys.stderr)
    print(f"[report] took {machine['run_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
