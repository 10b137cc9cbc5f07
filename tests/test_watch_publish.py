"""The watcher with the real publisher against a real docker-registry.

Checked from outside with skopeo (the digest at the tag, the signature manifest) and
cryptography (the ECDSA signature over cosign's payload).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from tests.test_watch_support import (
    PLAN,
    running_daemon,
    skopeo_digest,
    skopeo_signature_ok,
    wait_for,
    write_signed_workspace,
)
from watcher.watch.publishing import PublisherPlanStage


def test_plan_edits_move_the_signed_tag(
    tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    root = tmp_path / "ws"
    public = write_signed_workspace(root, registry.address)
    config = load_config(root)
    plan = root / "plans" / "demo.hcl"
    ref = config.plan_ref(plan)
    assert ref == f"{registry.address}/cloudboot/demo:latest"
    stage = PublisherPlanStage.from_config(config)
    with running_daemon(root, stage, initial_run=True) as daemon:  # type: ignore[arg-type]
        first = skopeo_digest(ref)
        assert first is not None
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], first, public)

        plan.write_text(PLAN.replace("v=1", "v=2"))
        wait_for(lambda: daemon.pipeline.runs == 2, what="publish of the edit")
        second = skopeo_digest(ref)
        assert second not in (None, first)
        assert second == daemon.pipeline.reports[-1].of("plan")[0].detail["digest"]
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], second, public)

        # invalid edit: error with file:line:col, tag unchanged, watcher alive
        plan.write_text(PLAN.replace('default_target = "a"', 'default_target = "nope"'))
        wait_for(lambda: daemon.pipeline.runs == 3, what="invalid run")
        error = daemon.pipeline.reports[-1].of("plan")[0].error or ""
        assert error.startswith(f"{plan}:1:"), error
        assert "nope" in error
        assert skopeo_digest(ref) == second

        plan.write_text(PLAN.replace("v=1", "v=3"))
        wait_for(lambda: daemon.pipeline.runs == 4, what="recovery")
        third = skopeo_digest(ref)
        assert third not in (None, first, second)
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], third, public)
