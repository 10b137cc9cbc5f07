"""How long publishing a small signed plan takes, against two oras-py baselines.

All three push to the same loopback docker-registry, a changed plan every round (what the
watcher does per edit):

- ours: ``publish_plan`` in-process, signed (cosign signature manifest included), one
  reusable ``RegistryClient``;
- baseline A: a fresh ``python`` process per publish running oras-py's push (unsigned);
- baseline B: oras-py's push in-process (unsigned), one client.

It then re-publishes an unchanged plan and reports the blob bytes that sent (must be 0).

Run: .venv/bin/python bench/publish.py [--runs N] [--quick] [--json PATH]
(``--quick``: 5 runs unless --runs is given; ``--json``: rows for bench/report.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import Row, add_report_options, emit  # noqa: E402
from guest.contract.oci import parse_ref  # noqa: E402
from publisher.localregistry import local_registry  # noqa: E402
from publisher.push import publish_plan  # noqa: E402
from publisher.registry import RegistryClient  # noqa: E402
from publisher.signing import generate_key_pair, parse_private_key  # noqa: E402

PLAN = 'default_target = "a"\ntarget "a" {{\n  kernel = "127.0.0.1:5000/k:{n}"\n}}\n'

ORAS_PUSH = r"""
import sys, oras.client
client = oras.client.OrasClient(insecure=True)
client.push(target=sys.argv[1], files=[sys.argv[2] + ":application/vnd.cloud-boot.plan.v1+hcl"],
            disable_path_validation=True, quiet=True)
"""


def median_ms(fn: Callable[[int], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="default 30 (--quick: 5)")
    add_report_options(parser)
    args = parser.parse_args()
    args.runs = args.runs or (5 if args.quick else 30)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import oras.client  # imported here: its import time is not what we measure

    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    plan = work / "plan.hcl"
    private_pem, _ = generate_key_pair(b"bench")
    key = parse_private_key(private_pem, b"bench")

    with local_registry(work / "registry") as reg:
        client = RegistryClient()
        ours_ref = parse_ref(f"{reg.address}/bench/ours:latest")

        def ours(i: int) -> None:
            plan.write_text(PLAN.format(n=f"ours-{i}"))
            publish_plan(client, ours_ref, plan, key)

        def ours_unsigned(i: int) -> None:
            plan.write_text(PLAN.format(n=f"unsigned-{i}"))
            publish_plan(client, ours_ref, plan)

        def oras_fresh(i: int) -> None:
            plan.write_text(PLAN.format(n=f"fresh-{i}"))
            subprocess.run(
                [sys.executable, "-c", ORAS_PUSH, f"{reg.address}/bench/fresh:latest", str(plan)],
                check=True,
                capture_output=True,
                cwd=work,
            )

        oras_client = oras.client.OrasClient(insecure=True)

        def oras_inproc(i: int) -> None:
            plan.write_text(PLAN.format(n=f"inproc-{i}"))
            with contextlib.redirect_stdout(io.StringIO()):
                oras_client.push(
                    target=f"{reg.address}/bench/inproc:latest",
                    files=[f"{plan}:application/vnd.cloud-boot.plan.v1+hcl"],
                    disable_path_validation=True,
                    quiet=True,
                )

        ours(-1)  # warm: token/connection set-up is a one-off per process
        oras_inproc(-1)
        results = {
            "ours, in-process, signed": median_ms(ours, args.runs),
            "ours, in-process, unsigned": median_ms(ours_unsigned, args.runs),
            "oras-py, fresh python per push, unsigned (A)": median_ms(
                oras_fresh, max(5, args.runs // 3)
            ),
            "oras-py, in-process, unsigned (B)": median_ms(oras_inproc, args.runs),
        }

        plan.write_text(PLAN.format(n="unchanged"))
        publish_plan(client, ours_ref, plan, key)
        fresh_client = RegistryClient()
        again = publish_plan(fresh_client, ours_ref, plan, key)

    ours_ms = results["ours, in-process, signed"][0]
    print(f"publish of a small plan to a loopback docker-registry, median of {args.runs} runs")
    print(f"{'variant':48} {'median ms':>10} {'p90 ms':>8} {'ours signed vs':>15}")
    for name, (median, times) in results.items():
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        print(f"{name:48} {median:10.1f} {p90:8.1f} {median / ours_ms:14.2f}x")
    print(
        f"unchanged re-publish: uploaded={again.uploaded}, blob bytes sent="
        f"{again.uploaded_bytes} (client total {fresh_client.uploaded_bytes})"
    )
    fresh_ms = results["oras-py, fresh python per push, unsigned (A)"][0]
    inproc_ms = results["oras-py, in-process, unsigned (B)"][0]
    rows = [
        Row(3, "signed publish, in-process (median)", ours_ms, "ms",
            "oras-py push, fresh process (A)", fresh_ms, target="median <= 30 ms",
            passed=ours_ms <= 30),
        Row(3, "signed publish, in-process (median)", ours_ms, "ms",
            "oras-py push, in-process, unsigned (B)", inproc_ms),
        Row(3, "unsigned publish, in-process (median)",
            results["ours, in-process, unsigned"][0], "ms",
            "oras-py push, in-process, unsigned (B)", inproc_ms),
        Row(3, "unchanged re-publish: blob bytes sent", again.uploaded_bytes, "B",
            target="0 bytes", passed=again.uploaded_bytes == 0),
    ]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
