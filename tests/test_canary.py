"""Canary publishing: the production tag moves only after the staged plan's gate passed.

The registry is a real docker-registry and every tag is read back with skopeo. The gate
here is a scripted stand-in for the QEMU boot, to test the publisher's side (limits,
deadline, a gate that raises) in seconds: it reads the *staged* plan back from the
registry by its staging ref and fails the one naming a device label that does not exist,
the way the boot of that plan does (tests/test_canary_qemu.py boots it for real). The
serial-log verdict the QEMU gate uses, the canary VM's argv and the checks made before
anything is pushed are tested below.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from publisher.canary import CanaryPolicy, CanaryRequest, CanaryResult, staging_tag
from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from publisher.summary import render
from publisher.workspace import format_outcomes, publish_workspace
from tests.helpers import PLAN, skopeo_digest, write_signed_workspace
from tests.test_gitops import git
from watcher.canary import Patterns, judge

BROKEN = PLAN.replace(
    '  kernel  = "127.0.0.1:1/k:1"\n', '  disk { device = "LABEL=nosuchlabel" }\n'
)


def staged_text(request: CanaryRequest) -> str:
    """The staged plan's bytes, fetched by the staging tag with skopeo (another client)."""
    tagged = request.staged.split("@")[0]
    out = Path(request.plan).parent.parent / f"staged-{request.digest[7:19]}"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{tagged}", f"dir:{out}"],
        check=True, capture_output=True,
    )  # fmt: skip
    manifest = (out / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == request.digest
    layer = json.loads(manifest)["layers"][0]["digest"]
    return (out / layer.removeprefix("sha256:")).read_text()


def label_gate(request: CanaryRequest, deadline: float) -> CanaryResult:
    text = staged_text(request)
    if "nosuchlabel" in text:
        tail = "cloud-boot: waiting for LABEL=nosuchlabel\nFATAL: no disk LABEL=nosuchlabel"
        return CanaryResult(False, "failure pattern: FATAL: no disk", "agent", tail)
    return CanaryResult(True, "booted", "hand-over to Boot0001", "Linux version 6.1")


@pytest.fixture
def ws(tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    root = tmp_path / "ws"
    write_signed_workspace(root, registry.address)
    (root / "plans" / "good.hcl").write_text(PLAN.replace("v=1", "good-1"))
    (root / "plans" / "bad.hcl").write_text(PLAN.replace("v=1", "bad-1"))
    (root / ".gitignore").write_text("cosign.key\n.cloudboot/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "v1")
    assert {o.status for o in publish_workspace(load_config(root), env={})} == {"published"}
    return root


def test_good_tag_moves_broken_tag_stays_and_the_report_says_why(
    ws: Path, registry: RunningRegistry
) -> None:
    good, bad = (f"{registry.address}/cloudboot/{n}:latest" for n in ("good", "bad"))
    before = {ref: skopeo_digest(ref) for ref in (good, bad)}
    (ws / "plans" / "good.hcl").write_text(PLAN.replace("v=1", "good-2"))
    (ws / "plans" / "bad.hcl").write_text(BROKEN)
    git(ws, "commit", "-q", "-am", "v2")

    outcomes = publish_workspace(load_config(ws), env={}, canary=CanaryPolicy(label_gate))
    by = {o.plan: o for o in outcomes}
    assert by["demo.hcl"].status == "unchanged" and by["demo.hcl"].canary is None
    assert by["good.hcl"].status == "published"
    assert skopeo_digest(good) == by["good.hcl"].digest != before[good]
    held = by["bad.hcl"]
    assert held.status == "held" and not held.ok
    assert skopeo_digest(bad) == before[bad], "production untouched"
    assert held.error and "canary: failure pattern: FATAL: no disk" in held.error
    assert held.canary and "LABEL=nosuchlabel" in held.canary["tail"]
    assert held.canary["stopped_at"] == "agent"
    # both were staged, by content, in their own repositories
    for o in (by["good.hcl"], held):
        staged = f"{o.ref.rsplit(':', 1)[0]}:{staging_tag(str(o.digest))}"
        assert skopeo_digest(staged) == o.digest
    text = format_outcomes(outcomes)  # the terminal says where it stopped and the tail
    assert "held      bad.hcl: canary: failure pattern: FATAL: no disk" in text
    assert "stopped at: agent" in text and "| FATAL: no disk LABEL=nosuchlabel" in text
    summary = render({"ok": False, "plans": [o.to_json() for o in outcomes]})
    assert "| `bad.hcl` | ⛔ held (canary failed) |" in summary
    assert "serial log tail" in summary


def test_the_run_deadline_holds_what_it_did_not_try(ws: Path, registry: RunningRegistry) -> None:
    ref = f"{registry.address}/cloudboot/good:latest"
    before = skopeo_digest(ref)
    (ws / "plans" / "good.hcl").write_text(PLAN.replace("v=1", "good-late"))
    policy = CanaryPolicy(label_gate, deadline_s=0)
    by = {o.plan: o for o in publish_workspace(load_config(ws), env={}, canary=policy)}
    assert by["good.hcl"].status == "held" and by["good.hcl"].canary
    assert by["good.hcl"].canary["result"] == "deadline"
    assert skopeo_digest(ref) == before


def test_canaries_run_up_to_the_limit_and_a_broken_gate_holds(
    ws: Path, registry: RunningRegistry
) -> None:
    for n in range(4):
        (ws / "plans" / f"extra{n}.hcl").write_text(PLAN.replace("v=1", f"extra-{n}"))
    running, peak, lock = [0], [0], threading.Lock()

    def gate(request: CanaryRequest, deadline: float) -> CanaryResult:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        if "extra3" in str(request.plan):
            raise RuntimeError("qemu exploded")
        return CanaryResult(True, "booted")

    by = {
        o.plan: o
        for o in publish_workspace(load_config(ws), env={}, canary=CanaryPolicy(gate, parallel=2))
    }
    assert 1 <= peak[0] <= 2
    assert [by[f"extra{n}.hcl"].status for n in range(3)] == ["published"] * 3
    assert by["extra3.hcl"].status == "held"
    assert (
        by["extra3.hcl"].canary and "gate error: qemu exploded" in by["extra3.hcl"].canary["result"]
    )
    assert skopeo_digest(f"{registry.address}/cloudboot/extra3:latest") is None


FIRMWARE = 'BdsDxe: loading Boot0002 "UEFI Misc Device"\nBdsDxe: starting Boot0002\n'
AGENT = (
    "[    0.000000] Linux version 6.1.0-cloud-amd64 (debian-kernel@lists.debian.org)\n"
    "cloud-boot: 00:00:01.000 fetching plan oci://10.0.2.2:5000/cloudboot/default:latest\n"
    "cloud-boot: 00:00:02.000 Boot0001 = cloud-boot demo; rebooting (total 1.900s)\n"
)
HANDOVER = 'BdsDxe: loading Boot0001 "cloudboot"\nBdsDxe: starting Boot0001\n'
TARGET = "[    0.000000] Linux version 6.1.0-cloud-amd64 (target)\n"
TARGET_UP = "[    1.234567] Run /init as init process\n"


def test_judge_default_success_is_the_staged_kernel_after_the_handover() -> None:
    verdict = judge(FIRMWARE + AGENT + HANDOVER + TARGET + TARGET_UP, Patterns(), finished=False)
    assert verdict and verdict.passed and verdict.stopped_at == "target init"
    # the target kernel announcing itself is not enough yet
    assert judge(FIRMWARE + AGENT + HANDOVER + TARGET, Patterns(), finished=False) is None
    # the agent's own kernel starting its init (before the hand-over) is not the target,
    # not even when the firmware's first disk (boot.iso) happens to be its Boot0001
    assert judge(FIRMWARE + AGENT + TARGET_UP, Patterns(), finished=False) is None
    not_staged = "".join(AGENT.splitlines(keepends=True)[:2])
    iso_first = 'BdsDxe: starting Boot0001 "UEFI Misc Device"\n' + not_staged + TARGET_UP
    assert judge(iso_first, Patterns(), finished=False) is None
    left = judge(FIRMWARE + AGENT, Patterns(), finished=True)
    assert left and not left.passed and left.result == "target did not come up"
    assert left.stopped_at == "staged, rebooting"
    failed = judge(FIRMWARE + AGENT + TARGET_UP, Patterns(), finished=True)
    assert failed and not failed.passed


def test_judge_failures_name_where_the_boot_stopped() -> None:
    panic = TARGET + "Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    verdict = judge(FIRMWARE + AGENT + HANDOVER + panic, Patterns(), finished=False)
    assert verdict and not verdict.passed and "Kernel panic - not syncing" in verdict.result
    assert verdict.stopped_at == "hand-over to Boot0001"
    assert verdict.tail.endswith("Unable to mount root fs")
    fatal = "FATAL: no disk LABEL=nosuchlabel (fix the plan's disk device)\n"
    early = judge(FIRMWARE + AGENT.splitlines(keepends=True)[0] + fatal, Patterns(), finished=False)
    assert early and not early.passed and early.stopped_at == "agent kernel"
    assert early.tail.endswith("LABEL=nosuchlabel (fix the plan's disk device)")
    # a pattern per plan: up only when the service says so; an emergency shell fails
    custom = Patterns(success=r"web: ready")
    assert judge(FIRMWARE + AGENT + HANDOVER + TARGET + TARGET_UP, custom, finished=False) is None
    assert judge(TARGET + "web: ready on :80\n", custom, finished=False).passed  # type: ignore[union-attr]
    shell = judge(TARGET + "You are in emergency mode.\n", custom, finished=False)
    assert shell and not shell.passed and "emergency" in shell.result


CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('[publish]\ncanary_failure = { "good.hcl" = "(" }\n',
         '[publish].canary_failure."good.hcl": not a regular expression'),
        ('[vm]\nbackend = "vfkit"\n', "[vm].backend: canary boots need QEMU"),
    ],
)  # fmt: skip
def test_a_canary_that_cannot_run_publishes_nothing(
    ws: Path, registry: RunningRegistry, toml: str, says: str
) -> None:
    config = ws / "cloudboot.toml"
    config.write_text(config.read_text() + toml)
    ref = f"{registry.address}/cloudboot/good:latest"
    before = skopeo_digest(ref)
    (ws / "plans" / "good.hcl").write_text(PLAN.replace("v=1", "good-unboot"))
    proc = subprocess.run(
        [CLOUDBOOT, "-C", str(ws), "publish", "--canary"],
        capture_output=True, text=True, env={**os.environ, "COSIGN_PASSWORD": "pw"},
    )  # fmt: skip
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert "cloudboot.toml" in proc.stderr
    assert skopeo_digest(ref) == before
    # without the canary the same workspace publishes (the settings are only the canary's)
    proc = subprocess.run(
        [CLOUDBOOT, "-C", str(ws), "publish", "--no-canary"],
        capture_output=True, text=True, env={**os.environ, "COSIGN_PASSWORD": "pw"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert skopeo_digest(ref) not in (None, before)


def test_a_canary_vm_leaves_the_workspace_alone(tmp_path: Path) -> None:
    """Its own ISO, NVRAM (a fresh template copy), cache disk and serial log; the
    workspace's disks copy-on-write, so two canaries can share them and neither writes."""
    from publisher.config import Accel
    from watcher.vm.canary import QemuCanary
    from watcher.vm.qemu import qemu_argv

    (tmp_path / "target.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "cloudboot.toml").write_text('[vm]\nbackend = "qemu"\ndisks = ["target.raw"]\n')
    gate = QemuCanary(load_config(tmp_path))
    into = tmp_path / "canary"
    into.mkdir()
    (into / "boot.iso").write_bytes(b"")
    spec = gate.spec(into / "boot.iso", into)
    argv = qemu_argv(spec, gate.firmware, accel=Accel.TCG)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[1:] == [
        f"if=pflash,format=raw,unit=1,file={into}/nvram.fd",
        f"if=none,id=disk0,format=raw,readonly=on,file={into}/boot.iso",
        f"if=none,id=disk1,format=raw,file={into}/cache.raw",
        f"if=none,id=disk2,format=raw,snapshot=on,file={tmp_path}/target.raw",
    ]
    assert (into / "nvram.fd").read_bytes() == gate.firmware.vars_template.read_bytes()
    assert f"file,id=serial0,path={into}/serial.log,append=on" in argv
    assert not (tmp_path / ".cloudboot").exists() and not (tmp_path / "build").exists()


def test_under_tcg_the_second_pass_runs_in_a_fresh_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's reboot ends the first process (``-action reboot=shutdown``); the second
    starts from the same files without it. A first process that exits before the agent
    staged anything (a power-off) is not relaunched: the boot failed there.

    The processes are stand-ins that write what each pass prints and exit: this pins the
    decision, tests/test_canary_qemu.py boots it for real."""
    import contextlib
    from collections.abc import Iterator

    from publisher.config import Accel
    from watcher.vm import canary as vmcanary

    (tmp_path / "cloudboot.toml").write_text('[vm]\nbackend = "qemu"\naccel = "tcg"\n')
    gate = vmcanary.QemuCanary(load_config(tmp_path))
    into = tmp_path / "canary"
    into.mkdir()
    (into / "boot.iso").write_bytes(b"")
    spec = gate.spec(into / "boot.iso", into)
    assert spec.accel is Accel.TCG

    def run(passes: list[str]) -> tuple[CanaryResult, list[list[str]]]:
        spec.serial_log.unlink(missing_ok=True)
        argvs: list[list[str]] = []

        @contextlib.contextmanager
        def spawn(argv: list[str], stdout: Path, **_: object) -> Iterator[subprocess.Popen[bytes]]:
            argvs.append(list(argv))
            stdout.touch()
            with spec.serial_log.open("a") as f:
                f.write(passes[len(argvs) - 1])
            yield subprocess.Popen(["true"])  # exits 0, as QEMU does on either action

        monkeypatch.setattr(vmcanary, "spawn", spawn)
        return gate.watch(spec, Patterns(), time.monotonic() + 60), argvs

    verdict, argvs = run([FIRMWARE + AGENT, HANDOVER + TARGET + TARGET_UP])
    assert verdict.passed and verdict.stopped_at == "target init", verdict
    assert len(argvs) == 2
    assert argvs[0][-2:] == ["-action", "reboot=shutdown"] and "-action" not in argvs[1]
    assert argvs[0][:-2] == argvs[1]  # same VM, same files

    powered_off = FIRMWARE + AGENT.splitlines(keepends=True)[0]
    verdict, argvs = run([powered_off])
    assert len(argvs) == 1 and not verdict.passed
    assert verdict.result == "target did not come up: the VM exited", verdict
