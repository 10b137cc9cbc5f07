"""The watcher's scheduling with the real watchdog observer on a real directory.

Stages are simple but real (see tests/helpers.py): the plan stage parses HCL with the
real parser and writes its output atomically; what is asserted is what a user would see:
which content got published, how many runs happened, what the status file says.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from tests.helpers import (
    FileBuildStage,
    FilePlanStage,
    FileVmStage,
    make_workspace,
    running_daemon,
    wait_for,
)

VALID = 'default_target = "a"\ntarget "a" {\n  kernel = "r/k:1"\n}\n'


def settle(seconds: float = 0.4) -> None:
    """Long enough past the 100 ms window that a pending batch would have run."""
    time.sleep(seconds)


def test_edit_publishes_and_touch_does_nothing(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage) as daemon:
        plan = root / "plans" / "demo.hcl"
        plan.write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1, what="first run")
        assert (tmp_path / "out" / "demo").read_text() == VALID
        # touch and a save without edits: same bytes, so nothing runs
        os.utime(plan)
        plan.write_text(VALID)
        settle()
        assert daemon.pipeline.runs == 1
        assert len(stage.calls) == 1
    status = json.loads((root / ".cloudboot" / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["runs"] == 1
    assert status["plans"]["demo.hcl"]["digest"].startswith("sha256:")
    assert status["stages"]["plan"]["result"] == "ok"
    assert status["batches"] >= 2  # the touch was seen, and dropped by content


def test_invalid_edit_keeps_last_good_and_recovers(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    vm = FileVmStage()
    with running_daemon(root, stage, vm_stage=vm) as daemon:
        plan = root / "plans" / "demo.hcl"
        plan.write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1)
        assert vm.restarts == 1
        plan.write_text('target "a" {\n  kernel = \n')
        wait_for(lambda: daemon.pipeline.runs == 2, what="invalid run")
        assert daemon.status.data["last_run"]["result"] == "error"
        error = daemon.status.data["stages"]["plan"]["error"] or ""
        assert f"{plan}:2:12" in error  # file:line:col of the parse error
        assert (tmp_path / "out" / "demo").read_text() == VALID  # last good kept
        assert vm.restarts == 1  # nothing new: the running VM is left alone
        status = json.loads((root / ".cloudboot" / "status.json").read_text())
        assert status["plans"]["demo.hcl"]["last_error"]
        assert status["stages"]["plan"]["result"] == "error"
        fixed = VALID.replace("r/k:1", "r/k:2")
        plan.write_text(fixed)
        wait_for(lambda: daemon.pipeline.runs == 3, what="recovery run")
        assert (tmp_path / "out" / "demo").read_text() == fixed
        assert vm.restarts == 2


def test_reverting_a_bad_edit_to_the_published_plan_does_not_restart_the_vm(
    tmp_path: Path,
) -> None:
    """Fixing a typo back to what is already published gives the guest nothing new."""
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    vm = FileVmStage()
    with running_daemon(root, stage, vm_stage=vm) as daemon:
        plan = root / "plans" / "demo.hcl"
        plan.write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1)
        plan.write_text('target "a" {\n  kernel = \n')
        wait_for(lambda: daemon.pipeline.runs == 2, what="invalid run")
        plan.write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 3, what="revert run")
        assert daemon.status.data["last_run"]["result"] == "ok"
        assert vm.restarts == 1


def test_thousand_rapid_writes_give_one_or_two_runs(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage) as daemon:
        plan = root / "plans" / "demo.hcl"
        for i in range(1000):
            plan.write_text(VALID.replace("r/k:1", f"r/k:{i}"))
        wait_for(lambda: daemon.pipeline.runs >= 1)
        settle()
        assert daemon.pipeline.runs in (1, 2)
        assert stage.calls[-1][1].decode() == VALID.replace("r/k:1", "r/k:999")
        assert daemon.queue.total_events >= 1000


def test_edit_during_run_queues_exactly_one_follow_up(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    stage.gate = threading.Event()
    with running_daemon(root, stage) as daemon:
        plan = root / "plans" / "demo.hcl"
        plan.write_text(VALID)
        assert stage.entered.wait(10)
        for i in range(5):  # several edits while the first run is held
            plan.write_text(VALID.replace("r/k:1", f"r/k:during-{i}"))
            time.sleep(0.03)
        settle()
        assert daemon.pipeline.runs == 0  # still held in the first run
        assert daemon.queue.pending() == 1  # the edits wait, coalesced, for the next run
        stage.gate.set()
        wait_for(lambda: daemon.pipeline.runs == 2, what="follow-up run")
        settle()
        assert daemon.pipeline.runs == 2
        assert [c[1].decode() for c in stage.calls] == [
            VALID,
            VALID.replace("r/k:1", "r/k:during-4"),
        ]


def test_editor_temp_files_git_and_cloudbootignore_are_ignored(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / ".cloudbootignore").write_text("plans/drafts/\n*.local.hcl\n")
    (root / "plans" / "drafts").mkdir()
    (root / "plans" / ".git").mkdir()
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage) as daemon:
        plans = root / "plans"
        (plans / ".demo.hcl.swp").write_bytes(b"vim swap")
        (plans / "4913").write_text("")
        (plans / "demo.hcl~").write_text(VALID)
        (plans / "#demo.hcl#").write_text(VALID)
        (plans / "sedX1b2Zq").write_text(VALID)  # `sed -i` writes here, then renames
        (plans / ".git" / "index").write_text("x")
        (plans / "drafts" / "wip.hcl").write_text(VALID)
        (plans / "mine.local.hcl").write_text(VALID)
        settle()
        assert daemon.queue.total_events == 0
        assert daemon.pipeline.runs == 0
        (plans / "other.hcl").write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1)
        assert [c[0] for c in stage.calls] == ["other.hcl"]


def test_one_window_runs_the_union_in_dependency_order(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    order: list[str] = []
    stage = FilePlanStage(tmp_path / "out")
    build = FileBuildStage(root / "kernel", tmp_path / "build" / "boot.iso")
    vm = FileVmStage()
    stage.order = build.order = vm.order = order
    with running_daemon(root, stage, build, vm) as daemon:
        (root / "kernel" / "recipe.toml").write_text("arch = 'aarch64'\n")
        (root / "plans" / "b.hcl").write_text(VALID)
        (root / "plans" / "a.hcl").write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1)
        settle()
        assert daemon.pipeline.runs == 1
        assert order == ["plan:a.hcl", "plan:b.hcl", "kernel", "vm"]
        # a broken recipe: error, image kept, VM untouched, watcher alive
        image = (tmp_path / "build" / "boot.iso").read_bytes()
        (root / "kernel" / "recipe.toml").write_text("FAIL\n")
        wait_for(lambda: daemon.pipeline.runs == 2)
        assert daemon.status.data["last_run"]["result"] == "error"
        assert (tmp_path / "build" / "boot.iso").read_bytes() == image
        assert vm.restarts == 1
        (root / "kernel" / "recipe.toml").write_text("arch = 'x86_64'\n")
        wait_for(lambda: daemon.pipeline.runs == 3)
        assert vm.restarts == 2
    assert vm.started_by_watcher and vm.stopped == 1  # it started the VM, so it stops it


def test_vm_not_started_by_watcher_is_left_running(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    vm = FileVmStage()
    vm.running = True  # someone else (`cloudboot vm up`) started it
    with running_daemon(root, FilePlanStage(tmp_path / "out"), vm_stage=vm) as daemon:
        (root / "plans" / "demo.hcl").write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 1)
        assert vm.restarts == 1
    assert vm.running and vm.stopped == 0


def test_initial_run_publishes_everything(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "plans" / "nested").mkdir()
    (root / "plans" / "nested" / "x.hcl").write_text(VALID)
    (root / "plans" / "README.md").write_text("not a plan")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage, initial_run=True) as daemon:
        assert daemon.pipeline.runs == 1
        assert sorted(c[0] for c in stage.calls) == ["demo.hcl", "x.hcl"]


def test_deleted_and_recreated_plan(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage) as daemon:
        plan = root / "plans" / "demo.hcl"
        plan.unlink()
        wait_for(lambda: daemon.pipeline.runs == 1)
        assert stage.calls == []  # a removal publishes nothing
        plan.write_text(VALID)
        wait_for(lambda: daemon.pipeline.runs == 2)
        assert stage.calls == [("demo.hcl", VALID.encode())]


def test_the_daemon_starts_an_edit_early_and_runs_it_once_the_window_closes(
    tmp_path: Path,
) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage, window=2.0) as daemon:
        plan = root / "plans" / "demo.hcl"
        edited = b'default_target = "b"\n'
        plan.write_bytes(edited)
        wait_for(lambda: ("demo.hcl", edited) in stage.prepared, what="early preparation")
        assert daemon.pipeline.runs == 0 and not stage.calls  # the window is still open
        wait_for(lambda: daemon.pipeline.runs == 1, what="the edit's run")
        assert stage.calls == [("demo.hcl", edited)]


def test_prepare_ahead_off_sends_nothing_before_the_window_closes(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    with running_daemon(root, stage, prepare_ahead=False) as daemon:
        (root / "plans" / "demo.hcl").write_text('default_target = "b"\n')
        wait_for(lambda: daemon.pipeline.runs == 1, what="the edit's run")
        assert stage.prepared == [] and len(stage.calls) == 1
