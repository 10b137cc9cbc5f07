"""A fleet of 1,000 plans: validating them, and publishing them cold and again with one changed.

Everything goes through the public APIs a user's command takes (``check_plans``, whose
parser the plan-contract work may speed up, and ``publish_workspace``, what
``cloudboot publish`` runs) against a loopback docker-registry behind a counting proxy,
so a warm publish's uploads are counted at the registry, not by the client (the timed
runs go straight to the registry; the proxy sees a third, uncounted-time run).

Baselines, in the same script: validating the plans one by one with ``check_plan`` (the
pre-fleet loop), and the cold publish (the warm one must cost a small fraction of it).

Run: .venv/bin/python bench/fleet.py [--plans N] [--json PATH] (--quick is accepted and
changes nothing: each number is one run already)
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.results import Row, add_report_options, emit  # noqa: E402
from publisher.config import load_config  # noqa: E402
from publisher.fleet import PlanMemory, check_plans, validator_fingerprint  # noqa: E402
from publisher.localregistry import local_registry  # noqa: E402
from publisher.plancheck import check_plan  # noqa: E402
from publisher.signing import generate_key_pair  # noqa: E402
from publisher.workspace import publish_workspace  # noqa: E402
from tests.faulty_proxy import faulty_proxy  # noqa: E402

PLAN = (
    'default_target = "a"\n\ntarget "a" {{\n  kernel  = "127.0.0.1:1/k:1"\n'
    '  cmdline = ["console=ttyS0", "plan={n}"]\n}}\n'
)


def git(root: Path, *args: str) -> None:
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "-C", str(root), *ident, *args], check=True, capture_output=True)


def workspace(root: Path, registry: str, count: int) -> list[Path]:
    plans = root / "plans"
    plans.mkdir(parents=True)
    paths = [plans / f"p{n:04}.hcl" for n in range(count)]
    for n, path in enumerate(paths):
        path.write_text(PLAN.format(n=n))
    private, _ = generate_key_pair(b"bench")
    (root / "cosign.key").write_bytes(private)
    (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{registry}"\n')
    (root / ".gitignore").write_text("cosign.key\n.cloudboot/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "plans")
    return paths


def seconds(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=1000)
    add_report_options(parser)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    import os

    os.environ.setdefault("COSIGN_PASSWORD", "bench")
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    n = args.plans

    # validation first, before the registry and its proxy start
    root = work / "ws"
    paths = workspace(root, "127.0.0.1:5000", n)
    datas = [(p, p.read_bytes()) for p in paths]
    check_plan(*reversed(datas[0]))  # parser tables built outside the timings
    one_by_one = seconds(lambda: [check_plan(d, p) for p, d in datas])
    fingerprint = validator_fingerprint()
    cold_check = seconds(lambda: check_plans(paths, PlanMemory(None, fingerprint)))
    cache = PlanMemory(None, fingerprint)
    check_plans(paths, cache)
    warm_check = seconds(lambda: check_plans(paths, cache))

    with local_registry(work / "registry") as reg, faulty_proxy(reg) as proxy:
        (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{reg.address}"\n')
        config = load_config(root)  # straight to the registry: what is timed
        cold = seconds(lambda: publish_workspace(config, env={}))
        paths[n // 2].write_text(PLAN.format(n="changed"))
        git(root, "commit", "-q", "-am", "one plan changed")
        warm = seconds(lambda: publish_workspace(config, env={}))
        # the same repositories through the counting proxy: what a warm run writes
        (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{proxy.address}"\n')
        paths[n // 3].write_text(PLAN.format(n="changed again"))
        git(root, "commit", "-q", "-am", "another plan changed")
        outcomes = publish_workspace(load_config(root), env={})
        uploads = len(proxy.seen("PUT", r"/blobs/uploads/"))
        manifests = len(proxy.seen("PUT", r"/manifests/"))
        published = sum(o.status == "published" for o in outcomes)
        changed = f"/{paths[n // 3].stem}/"
        others = [e for e in proxy.exchanges if changed not in e.path]
        per_plan = len(others) / (n - 1)
        heads_only = all(e.method == "HEAD" for e in others)

    print(f"{n} plans, loopback docker-registry behind a counting proxy")
    print(f"validate one by one (check_plan)    {one_by_one:8.2f} s")
    print(f"validate, new bytes (check_plans)   {cold_check:8.2f} s")
    print(f"validate, unchanged (check_plans)   {warm_check:8.3f} s")
    print(f"publish cold                        {cold:8.2f} s")
    print(f"publish warm, one plan changed      {warm:8.2f} s")
    print(f"  blob uploads {uploads}, manifest PUTs {manifests}, plans published {published}")
    print(f"  requests per unchanged plan {per_plan:.2f} (HEADs only: {heads_only})")
    rows = [
        Row(17, f"validate {n} new plans (check_plans)", cold_check, "s",
            "one by one (check_plan)", one_by_one, target="< 1 s", passed=cold_check < 1),
        Row(17, f"validate {n} unchanged plans (remembered by content)", warm_check, "s",
            "one by one (check_plan)", one_by_one, target="< 1 s", passed=warm_check < 1),
        Row(17, f"publish {n} plans cold (signed)", cold, "s"),
        Row(17, f"publish {n} plans warm, one changed", warm, "s", "cold publish", cold,
            target="< 5 s", passed=warm < 5),
        Row(17, "warm publish: blob uploads at the registry", uploads, "uploads",
            target="1 plan (config + plan + signature blobs: <= 3)",
            passed=published == 1 and 0 < uploads <= 3),
        Row(17, "warm publish: registry requests per unchanged plan", per_plan, "requests",
            target="<= 2, HEADs only (tag, signature tag)",
            passed=per_plan <= 2 and heads_only),
    ]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
