"""The watcher with the real publisher against a real docker-registry.

Checked from outside with skopeo (the digest at the tag, the signature manifest) and
cryptography (the ECDSA signature over cosign's payload).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from publisher.workspace import PlanPublisher
from tests.helpers import (
    PLAN,
    running_daemon,
    skopeo_digest,
    skopeo_signature_ok,
    wait_for,
    write_signed_workspace,
)


@dataclass(frozen=True)
class SignedStage:
    stage: PlanPublisher
    plan: Path
    ref: str
    public: bytes

    @property
    def root(self) -> Path:
        return self.plan.parent.parent


@pytest.fixture
def workspace_stage(
    tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> SignedStage:
    """The watcher's plan stage on a signed workspace (plans/demo.hcl, nothing published)."""
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    root = tmp_path / "ws"
    public = write_signed_workspace(root, registry.address)
    config = load_config(root)
    plan = root / "plans" / "demo.hcl"
    stage = PlanPublisher.from_config(config)
    return SignedStage(stage, plan, config.plan_ref(plan), public)


@pytest.fixture
def signed_stage(workspace_stage: SignedStage) -> SignedStage:
    """The same, with the plan published once."""
    workspace_stage.stage.publish(workspace_stage.plan)
    return workspace_stage


def test_plan_edits_move_the_signed_tag(
    workspace_stage: SignedStage, registry: RunningRegistry
) -> None:
    stage, plan, ref, public = (workspace_stage.stage, workspace_stage.plan,
                                workspace_stage.ref, workspace_stage.public)  # fmt: skip
    assert ref == f"{registry.address}/cloudboot/demo:latest"
    with running_daemon(workspace_stage.root, stage, initial_run=True) as daemon:  # type: ignore[arg-type]
        first = skopeo_digest(ref)
        assert first is not None
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], first, public)

        plan.write_text(PLAN.replace("v=1", "v=2"))
        wait_for(lambda: daemon.pipeline.runs == 2, what="publish of the edit")
        second = skopeo_digest(ref)
        assert second not in (None, first)
        run = daemon.status.data["stages"]["plan"]["detail"]
        assert run["digest"] == second
        assert run["prepared_ahead"]  # uploaded + signed in the window, tag moved after
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], second, public)

        # invalid edit: error with file:line:col, tag unchanged, watcher alive
        plan.write_text(PLAN.replace('default_target = "a"', 'default_target = "nope"'))
        wait_for(lambda: daemon.pipeline.runs == 3, what="invalid run")
        error = daemon.status.data["stages"]["plan"]["error"] or ""
        assert error.startswith(f"{plan}:1:"), error
        assert "nope" in error
        assert skopeo_digest(ref) == second

        plan.write_text(PLAN.replace("v=1", "v=3"))
        wait_for(lambda: daemon.pipeline.runs == 4, what="recovery")
        third = skopeo_digest(ref)
        assert third not in (None, first, second)
        assert skopeo_signature_ok(ref.rsplit(":", 1)[0], third, public)


def _digest_of_plan(plan: Path) -> str:
    from guest.contract.oci import digest_of, plan_manifest

    manifest, _ = plan_manifest(plan.read_bytes(), plan.name)
    return digest_of(bytes(manifest))


def test_prepared_edit_is_signed_but_untagged_until_the_run_commits_it(
    signed_stage: SignedStage,
) -> None:
    stage, plan, ref, public = (signed_stage.stage, signed_stage.plan, signed_stage.ref,
                                signed_stage.public)  # fmt: skip
    name = ref.rsplit(":", 1)[0]
    first = skopeo_digest(ref)

    plan.write_text(PLAN.replace("v=1", "v=2"))
    stage.prepare(plan)
    ahead = _digest_of_plan(plan)
    wait_for(lambda: skopeo_signature_ok(name, ahead, public), what="signature of the new bytes")
    assert skopeo_digest(ref) == first  # prepared, signed by digest, tag not moved
    outcome = stage.publish(plan)
    assert outcome.digest == ahead and outcome.uploaded and outcome.prepared_ahead
    assert skopeo_digest(ref) == ahead

    # the file changed again after the preparation: the run publishes what is on disk now
    plan.write_text(PLAN.replace("v=1", "v=3"))
    stage.prepare(plan)
    plan.write_text(PLAN.replace("v=1", "v=4"))
    outcome = stage.publish(plan)
    assert not outcome.prepared_ahead  # those bytes were never prepared
    assert outcome.digest == _digest_of_plan(plan) == skopeo_digest(ref)
    assert skopeo_signature_ok(name, outcome.digest, public)


def test_prepared_invalid_edit_sends_nothing_and_the_run_reports_it(
    signed_stage: SignedStage,
) -> None:
    stage, plan, ref = signed_stage.stage, signed_stage.plan, signed_stage.ref
    first = skopeo_digest(ref)

    plan.write_text(PLAN.replace('default_target = "a"', 'default_target = "nope"'))
    stage.prepare(plan)
    with pytest.raises(Exception) as caught:
        stage.publish(plan)
    assert str(caught.value).startswith(f"{plan}:1:") and "nope" in str(caught.value)
    assert skopeo_digest(ref) == first
    manifest = f"{ref.rsplit(':', 1)[0]}@{_digest_of_plan(plan)}"
    assert skopeo_digest(manifest) is None  # not even an untagged manifest was sent
