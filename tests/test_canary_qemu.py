"""`cloudboot publish --canary` for real: two staged plans boot in QEMU (TCG, OVMF) side by side.

Everything is what a user runs: a workspace with the repo's recipe (guest agent) and its
own signing key, the real docker-registry, the `cloudboot` CLI in its own process, the
demo target disk. Each canary gets its own boot.iso whose signed command line names the
staging ref. The good plan's target kernel comes up after the Boot0001 hand-over, so its
production tag moves; the broken one names a disk label no disk has, the agent stops with
FATAL, and its production tag stays where it was (read back with skopeo). The report
(JSON and the markdown summary) says why and where the boot stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from publisher.workspace import publish_workspace
from tests.canary_ws import canary_workspace, disk_plan
from tests.helpers import skopeo_digest
from tests.qemu_lab import OVMF_CODE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]
CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")


def test_a_broken_plan_is_held_while_the_good_one_moves(
    tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    ws = canary_workspace(tmp_path / "ws", registry.address)
    good, bad = (ws / "plans" / f"{n}.hcl" for n in ("good", "bad"))
    good.write_text(disk_plan("LABEL=cbtarget", "v1"))
    bad.write_text(disk_plan("LABEL=cbtarget", "v1-bad"))
    assert {o.status for o in publish_workspace(load_config(ws), env={})} == {"published"}
    refs = {n: f"{registry.address}/cloudboot/{n}:latest" for n in ("good", "bad")}
    before = {n: skopeo_digest(ref) for n, ref in refs.items()}

    good.write_text(disk_plan("LABEL=cbtarget", "v2"))
    bad.write_text(disk_plan("LABEL=nosuchlabel", "v2-bad"))
    summary = ws / "summary.md"
    proc = subprocess.run(
        [CLOUDBOOT, "-C", str(ws), "publish", "--json", "--summary", str(summary)],
        capture_output=True, text=True, env={**os.environ, "COSIGN_PASSWORD": "pw"},
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout + proc.stderr
    by = {p["plan"]: p for p in json.loads(proc.stdout)["plans"]}
    # on failure, the whole verdict (pytest shortens a dict; the serial tail is the clue)
    report = json.dumps(by, indent=1)

    moved = by["good.hcl"]
    assert moved["status"] == "published", report
    assert moved["canary"]["passed"] and moved["canary"]["stopped_at"] == "target init", report
    assert "Run /init as init process" in moved["canary"]["tail"]
    assert skopeo_digest(refs["good"]) == moved["digest"] != before["good"]

    held = by["bad.hcl"]
    assert held["status"] == "held" and not held["canary"]["passed"], report
    assert "FATAL" in held["canary"]["result"] and "nosuchlabel" in held["canary"]["result"]
    assert held["canary"]["stopped_at"] == "plan verified", report
    assert "nosuchlabel" in held["canary"]["tail"]
    assert skopeo_digest(refs["bad"]) == before["bad"], "production tag moved"
    # the exit names the plan and why; the CI summary carries the verdicts
    assert "bad.hcl held: canary: failure pattern" in proc.stderr
    text = summary.read_text()
    assert "| `bad.hcl` | ⛔ held (canary failed) |" in text and "nosuchlabel" in text
    # the canaries' images went to their own temp dirs, not the workspace's boot.iso
    assert not (ws / "build" / "boot.iso").exists()
