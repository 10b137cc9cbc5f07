#!/usr/bin/env python3
"""Soak: the watcher as a build-host service, many edits, the registry restarted under it.

One ``cloudboot watch --no-vm`` process (as the agent unit runs it) watches several plans
while this script writes edits to them, round robin in random bursts, and restarts the
docker-registry (same port, same storage) every few hundred edits, sometimes with edits
landing while it is down. At every checkpoint (before each restart and at the end) it
waits until every plan's tag points at the digest of the file's *current* content and
that digest carries a valid signature by the workspace key: an edit whose publish was
lost would leave a tag behind for good, so "no event lost" is checked, not assumed. RSS
and open file descriptors of the watcher are sampled at each checkpoint; their slopes
(least squares over the checkpoints after the first, per 1,000 edits) say whether
anything leaks.

Usage: bench/soak.py [--edits N] [--plans P] [--restart-every K] [--quick] [--json PATH]
(defaults 10,000 edits over 4 plans, a restart every 300 edits; --quick: 1,000 / 250)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import Row, add_report_options, emit  # noqa: E402
from guest.contract import cosign  # noqa: E402
from guest.contract.oci import parse_ref, plan_manifest  # noqa: E402
from publisher.localregistry import free_port, local_registry  # noqa: E402
from publisher.refsign import verify_ref  # noqa: E402
from publisher.registry import RegistryClient  # noqa: E402
from publisher.signing import generate_key_pair  # noqa: E402

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"
PLAN = """default_target = "a"

target "a" {
  kernel  = "127.0.0.1:1/k:1"
  cmdline = ["console=ttyS0", "plan=%s", "edit=%d"]
}
"""
#: How long a checkpoint may wait for the tags to catch up before the soak fails.
SETTLE_TIMEOUT = 120.0


def digest_of_plan(text: str, name: str) -> str:
    manifest, _ = plan_manifest(text.encode(), name)
    return manifest.digest


def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


class Soak:
    def __init__(self, root: Path, registry: str, plans: int, public: bytes) -> None:
        self.root = root
        self.registry = registry
        self.names = [f"p{i}" for i in range(plans)]
        self.content: dict[str, str] = {}
        self.client = RegistryClient(insecure=True)
        self.public = cosign.load_public_key(public)

    def write(self, name: str, n: int) -> None:
        text = PLAN % (name, n)
        (self.root / "plans" / f"{name}.hcl").write_text(text)
        self.content[name] = text

    def lagging(self) -> list[str]:
        """Plans whose tag is not (yet) at their current content, signed."""
        out = []
        for name in self.names:
            ref = parse_ref(f"{self.registry}/cloudboot/{name}:latest")
            want = digest_of_plan(self.content[name], f"{name}.hcl")
            try:
                info = self.client.head_manifest(ref)
                if info is None or info.digest != want:
                    out.append(name)
                    continue
                verify_ref(self.client, ref, self.public)
            except Exception:  # a registry mid-restart, a signature not there yet
                out.append(name)
        return out

    def settle(self) -> float:
        t0 = time.monotonic()
        while (left := self.lagging()) and time.monotonic() - t0 < SETTLE_TIMEOUT:
            time.sleep(0.1)
        if left:
            raise SystemExit(f"EVENT LOST: tags of {left} never reached their files' content")
        return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=None, help="default 10000 (--quick: 1000)")
    parser.add_argument("--plans", type=int, default=4)
    parser.add_argument("--restart-every", type=int, default=None, help="default 300 (250)")
    add_report_options(parser)
    args = parser.parse_args()
    edits = args.edits or (1000 if args.quick else 10_000)
    every = args.restart_every or (250 if args.quick else 300)
    rng = random.Random(17)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tmpdir = Path(tmp)
        port, storage = free_port(), tmpdir / "storage"

        def start_registry() -> ExitStack:
            inner = ExitStack()
            inner.enter_context(local_registry(tmpdir / "reg", port=port, storage=storage))
            return inner

        registry = start_registry()
        address = f"127.0.0.1:{port}"
        root = tmpdir / "ws"
        (root / "plans").mkdir(parents=True)
        private, public = generate_key_pair(b"soak")
        (root / "cosign.key").write_bytes(private)
        (root / "cosign.pub").write_bytes(public)
        (root / "cloudboot.toml").write_text(
            f'[registry]\nurl = "{address}"\nretry_seconds = 60\n[watch]\ndebounce_ms = 50\n'
        )
        soak = Soak(root, address, args.plans, public)
        for name in soak.names:
            soak.write(name, 0)
        env = {**os.environ, "COSIGN_PASSWORD": "soak"}
        log = (tmpdir / "watch.log").open("wb")
        proc = subprocess.Popen(
            [CLOUDBOOT, "--workspace", str(root), "watch", "--no-vm"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(proc.wait, 30)
        stack.callback(proc.terminate)
        t_start = time.monotonic()
        soak.settle()
        samples: list[tuple[int, int, int]] = [(0, *proc_sample(proc.pid))]
        restarts, settles, down_edits = 0, [], 0
        done = 0
        while done < edits:
            batch = min(every, edits - done)
            for _ in range(batch):
                done += 1
                soak.write(rng.choice(soak.names), done)
                if rng.random() < 0.3:
                    time.sleep(rng.uniform(0.0, 0.12))  # a pause: some bursts close
            settles.append(soak.settle())
            samples.append((done, *proc_sample(proc.pid)))
            if proc.poll() is not None:
                raise SystemExit(f"the watcher exited ({proc.returncode}); see {log.name}")
            if done < edits:  # restart, with a few edits landing while it is down
                registry.close()
                for _ in range(min(10, edits - done)):
                    done += 1
                    down_edits += 1
                    soak.write(rng.choice(soak.names), done)
                time.sleep(0.5)
                registry = start_registry()
                restarts += 1
        wall = time.monotonic() - t_start
        runs = json.loads((root / ".cloudboot" / "status.json").read_text()).get("runs", 0)
        stack.callback(registry.close)
    steady = samples[1:]
    xs = [s[0] / 1000 for s in steady]
    rss_slope = slope(xs, [s[1] for s in steady])
    fd_slope = slope(xs, [s[2] for s in steady])
    rss_first, rss_last = samples[1][1], samples[-1][1]
    fds = sorted({s[2] for s in samples})
    print(f"edits {edits} over {args.plans} plans, {restarts} registry restarts, {wall:.0f} s")
    print(f"the watcher ran {runs} times (bursts of edits are one run each)")
    print(f"every checkpoint: all plans at their final content, signed ({len(settles)} checks)")
    print(
        f"settle after a batch: median {statistics.median(settles):.2f} s, max {max(settles):.2f} s"
    )
    print(f"RSS: {rss_first} -> {rss_last} KiB, slope {rss_slope:+.1f} KiB per 1000 edits")
    print(f"open fds: {fds}, slope {fd_slope:+.3f} per 1000 edits")
    note = (
        f"{edits} edits, {args.plans} plans, {restarts} registry restarts"
        f" ({down_edits} edits while down), {runs} watcher runs"
    )
    rows = [
        Row(17, "soak: checkpoints with every plan at its final content, signed", len(settles),
            "checks", target="all (no event lost)", passed=True, note=note),
        Row(17, "soak: watcher RSS slope", rss_slope, "KiB/1000 edits",
            target="flat (< 256 KiB per 1000 edits)", passed=abs(rss_slope) < 256,
            note=f"RSS {rss_first} -> {rss_last} KiB after warm-up"),
        Row(17, "soak: watcher open fds slope", fd_slope, "fds/1000 edits",
            target="flat (< 0.5 per 1000 edits)", passed=abs(fd_slope) < 0.5,
            note=f"fd counts seen: {fds}"),
        Row(17, "soak: wall time per edit", wall / edits * 1000, "ms", note=note),
    ]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
