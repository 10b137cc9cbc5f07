#!/usr/bin/env python3
"""An idle watcher's CPU and memory, and how many runs a 10,000-event burst causes.

Starts ``cloudboot watch --no-vm --no-initial`` on a scratch workspace (with a real
registry, so the plan stage is the real one) and samples /proc/<pid> for DURATION seconds:
CPU as a share of one core (utime+stime delta) and peak RSS. Baseline, in the same
script: a bare Python interpreter with the same imports sleeping for the same time (what
the watcher costs on top of just being loaded). Then the burst: 10,000 file events
(1,000 files in plans/snippets/ written 10 times each, like a branch switch) plus one
plan edit; the status file must show exactly one run.
Targets: <= 0.5 % of a core and <= 80 MB RSS idle; the burst gives one run.
Usage: bench/watch_idle.py [--duration 60] [--burst 10000] [--quick] [--json PATH]
(``--quick`` samples for 15 s instead of 60; ``--json``: rows for bench/report.py)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import Row, add_report_options, emit  # noqa: E402
from publisher.localregistry import local_registry  # noqa: E402
from publisher.signing import generate_key_pair  # noqa: E402

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"
TICKS = os.sysconf("SC_CLK_TCK")
PLAN = 'default_target = "a"\n\ntarget "a" {\n  kernel = "127.0.0.1:1/k:1"\n  cmdline = "%s"\n}\n'
BASELINE = (
    "import time, structlog, typer, watchdog.observers, requests, cryptography, hcl2;"
    "import publisher.push, guest.contract.plan; time.sleep(%f)"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample(pid: int, duration: float) -> tuple[float, float]:
    """(% of one core, peak RSS MB) over ``duration`` seconds."""
    cpu0, t0, peak = cpu_seconds(pid), time.monotonic(), 0.0
    while time.monotonic() - t0 < duration:
        peak = max(peak, rss_mb(pid))
        time.sleep(1.0)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100, peak


def status(root: Path) -> dict[str, object]:
    path = root / ".cloudboot" / "status.json"
    data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None, help="default 60 (--quick: 15)")
    parser.add_argument("--burst", type=int, default=10_000)
    add_report_options(parser)
    args = parser.parse_args()
    args.duration = args.duration or (15.0 if args.quick else 60.0)
    env = {**os.environ, "COSIGN_PASSWORD": "bench", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp, local_registry(Path(tmp) / "registry") as reg:
        root = Path(tmp) / "ws"
        (root / "plans" / "snippets").mkdir(parents=True)
        private, _ = generate_key_pair(b"bench")
        (root / "cosign.key").write_bytes(private)
        (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{reg.address}"\n')
        (root / "plans" / "demo.hcl").write_text(PLAN % "v0")

        base = subprocess.Popen([sys.executable, "-c", BASELINE % (args.duration + 5)], env=env)
        time.sleep(3)  # imports done
        base_cpu, base_rss = sample(base.pid, args.duration)
        base.kill()
        base.wait()

        proc = subprocess.Popen(
            [CLOUDBOOT, "--workspace", str(root), "watch", "--no-vm", "--no-initial"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while status(root).get("state") != "idle":
                time.sleep(0.05)
            time.sleep(2)
            cpu, rss = sample(proc.pid, args.duration)

            files = max(1, args.burst // 10)
            t0 = time.perf_counter()
            for rnd in range(args.burst // files):
                for i in range(files):
                    (root / "plans" / "snippets" / f"s{i}.txt").write_text(f"{rnd}")
            (root / "plans" / "demo.hcl").write_text(PLAN % "after-burst")
            burst_s = time.perf_counter() - t0
            while status(root).get("runs", 0) == 0:
                time.sleep(0.05)
            time.sleep(1.0)  # a second run would have started by now
            data = status(root)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"idle for {args.duration:.0f} s:")
    print(f"{'process':28} {'CPU % of a core':>16} {'peak RSS MB':>12}")
    print(f"{'python + imports (baseline)':28} {base_cpu:16.3f} {base_rss:12.1f}")
    print(f"{'cloudboot watch':28} {cpu:16.3f} {rss:12.1f}")
    print(f"target CPU <= 0.5 %: {'met' if cpu <= 0.5 else 'MISSED'}; "
          f"target RSS <= 80 MB: {'met' if rss <= 80 else 'MISSED'}")  # fmt: skip
    print(f"RSS ratio watcher/baseline: {rss / base_rss:.2f}x")
    runs = data.get("runs")
    print(f"burst: {args.burst} writes + 1 plan edit in {burst_s * 1000:.0f} ms -> "
          f"events seen {data.get('events')}, batches {data.get('batches')}, runs {runs} "
          f"({'met' if runs == 1 else 'MISSED'}: one run)")  # fmt: skip
    idle = f"idle {args.duration:.0f} s"
    rows = [
        Row(7, "idle watcher CPU", cpu, "% of a core", "python + the same imports, sleeping",
            base_cpu, target="<= 0.5 %", passed=cpu <= 0.5, note=idle),
        Row(7, "idle watcher peak RSS", rss, "MB", "python + the same imports, sleeping",
            base_rss, target="<= 80 MB", passed=rss <= 80, note=idle),
        Row(7, f"runs after a {args.burst}-event burst + 1 plan edit",
            runs if isinstance(runs, int) else 0, "runs",
            target="1 run", passed=runs == 1,
            note=f"events seen {data.get('events')}, batches {data.get('batches')}"),
    ]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
