"""Canary wall time per plan vs one bare boot (QEMU TCG, OVMF, the guest agent).

The workspace the slow test uses (tests/canary_ws.py): the repo's recipe, the real
docker-registry, the demo target disk. The baseline, in the same run: one bare boot of the
workspace's own boot.iso (built first, so its compressed initramfs is cached as a
`cloudboot up` user's is) from power-on to the default plan's target kernel running its
init, judged on the serial log exactly as a canary is. Then a `publish` with canaries
on for N changed plans, ``canary_parallel`` at once: the wall time per plan includes
staging, the per-canary boot.iso (the cmdline-only rebuild), the boot and the tag move.

Usage: .venv/bin/python bench/canary.py [--quick] [--plans N] [--json PATH]
(``--quick``: 2 plans, 2 at once, one bare boot; default 4 plans, 2 at once, the bare
boot's median of 3)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from bench.results import Row, add_report_options, emit
from publisher.config import load_config
from publisher.localregistry import local_registry
from publisher.media.build import build_from_config
from publisher.workspace import load_signing_key, publish_workspace
from tests.canary_ws import canary_workspace, disk_plan
from watcher.canary import Patterns
from watcher.cli.demo import attach_demo_disk
from watcher.vm.canary import QemuCanary, canary_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=0, help="changed plans (default 4; quick 2)")
    add_report_options(parser)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    os.environ.setdefault("COSIGN_PASSWORD", "pw")
    n = args.plans or (2 if args.quick else 4)
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        work = Path(tmp)
        with local_registry(work / "registry") as reg:
            root = canary_workspace(work / "ws", reg.address)
            plans = [root / "plans" / f"p{i}.hcl" for i in range(n)]
            (root / "plans" / "default.hcl").write_text(disk_plan("LABEL=cbtarget", "base"))
            for p in plans:
                p.write_text(disk_plan("LABEL=cbtarget", f"{p.stem}-1"))
            config, _disk = attach_demo_disk(load_config(root))
            publish_workspace(config, env={})  # production tags to move from
            start = time.monotonic()
            build_from_config(config, load_signing_key(config))
            iso_build = time.monotonic() - start

            gate = QemuCanary(config)
            start = time.monotonic()
            gate.boot_iso(config.plan_ref(plans[0]), Path(tempfile.mkdtemp(dir=work)))
            rebuild = time.monotonic() - start
            bares = []
            for _ in range(1 if args.quick else 3):
                into = Path(tempfile.mkdtemp(dir=work))
                start = time.monotonic()
                bare = gate.watch(gate.spec(config.build.iso, into), Patterns(), start + 900)
                bares.append(time.monotonic() - start)
                if not bare.passed:
                    raise SystemExit(f"the bare boot did not come up: {bare.result}\n{bare.tail}")
            bare_s = statistics.median(bares)

            for p in plans:
                p.write_text(disk_plan("LABEL=cbtarget", f"{p.stem}-2"))
            start = time.monotonic()
            outcomes = publish_workspace(config, env={}, canary=canary_policy(config))
            wall = time.monotonic() - start
    tried = [o for o in outcomes if o.canary]
    failed = [o for o in tried if o.status != "published"]
    if failed or len(tried) != n:
        raise SystemExit(f"canaries did not all pass: {[(o.plan, o.error) for o in failed]}")
    each = statistics.median(float(o.canary["seconds"]) for o in tried if o.canary)
    parallel = config.publish.canary_parallel
    per_plan = wall / n
    print(f"workspace boot.iso build (full, fills the initramfs cache): {iso_build:7.1f} s")
    print(f"canary boot.iso (cmdline-only rebuild, cached initramfs):   {rebuild:7.1f} s"
          f"  ({rebuild / iso_build:.2f}x the full build)")  # fmt: skip
    print(f"bare boot: power-on -> target init, median of {len(bares)}:         {bare_s:7.1f} s")
    print(f"one canary (boot.iso rebuild + boot), median of {n}:        {each:7.1f} s"
          f"  ({each / bare_s:.2f}x the bare boot)")  # fmt: skip
    print(
        f"publish --canary, {n} plans {parallel} at once: {wall:.1f} s,"
        f" {per_plan:.1f} s per plan ({per_plan / bare_s:.2f}x the bare boot)"
    )
    base = "one bare boot of boot.iso: power-on -> target init"
    rows = [
        Row(17, f"canary wall time per plan ({n} plans, {parallel} at once)", per_plan, "s",
            base, bare_s, note="whole publish --canary / plans, TCG"),
        Row(17, "one canary: boot.iso rebuild + boot to target init", each, "s", base, bare_s,
            note=f"median of {n}, {parallel} VMs at once on this machine"),
        Row(17, "canary boot.iso: cmdline-only rebuild", rebuild, "s",
            "full boot.iso build (fills the initramfs cache)", iso_build),
    ]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
