"""`cloudboot plan validate` / `render` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"


def cloudboot(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDBOOT, "--log-format", "json", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


CONSOLE_PLAN = """\
default_target = "linux"
locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}
target "linux" {
  index   = "reg.example/linux:6.6"
  cmdline = ["console=${local.console}", "ro"]
}
"""


def test_validate_example_plans_dir_exits_zero() -> None:
    proc = cloudboot("plan", "validate", "plans/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the examples show the docs-only forms too: warnings, not errors
    assert all(": warning: upstream's guest rejects " in line for line in proc.stdout.splitlines())
    assert "plan(s) valid" in proc.stderr


def test_validate_prints_every_error_and_exits_one(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    (plans / "nested").mkdir(parents=True)
    (plans / "good.hcl").write_text(CONSOLE_PLAN)
    (plans / "nested" / "prod.hcl").write_text(
        'default_target = "primry"\n\ntarget "primary" {\n  index = "r/p"\n}\n'
        'target "rescue" {\n  kernel = "r/k"\n  disk { device = "/dev/vda1" }\n}\n'
    )
    (plans / "broken.hcl").write_text('target "x" {\n  index = \n}\n')
    (plans / "notes.txt").write_text("not a plan")
    proc = cloudboot("plan", "validate", plans)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines == [
        f"{plans}/broken.hcl:2:11: HCL syntax error: unexpected end of line; "
        "expected an expression",
        f'{plans}/nested/prod.hcl:1:18: default_target "primry" is not defined; '
        "targets: primary, rescue",
        f'{plans}/nested/prod.hcl:6:1: target "rescue" must set exactly one source: an OCI ref '
        "(index/kernel/initrd/modules), a disk, or subplan; it sets an OCI ref and a disk",
    ]
    assert "2 of 3 plan(s) invalid, 3 error(s)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_json_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hcl"
    bad.write_text('target "a" {\n  arch  = "x86"\n  index = "r/a"\n}\n')
    good = tmp_path / "good.hcl"
    good.write_text(CONSOLE_PLAN)
    proc = cloudboot("plan", "validate", "--json", good, bad, tmp_path / "missing.hcl")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["valid"] is False
    by_path = {p["path"]: p for p in report["plans"]}
    assert by_path[str(good)] == {"path": str(good), "valid": True, "errors": [], "warnings": []}
    (error,) = by_path[str(bad)]["errors"]
    assert (error["line"], error["column"]) == (2, 11)
    assert error["message"].startswith('target "a": arch "x86" is not valid')
    assert by_path[str(tmp_path / "missing.hcl")]["errors"][0]["message"] == (
        "no such file or directory: check the path"
    )


def test_validate_defaults_to_the_workspace_plans_dir(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.hcl").write_text('target "a" {\n  index = local.r\n}\n')
    proc = cloudboot("-C", tmp_path, "plan", "validate")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{tmp_path}/plans/p.hcl:2:11: local.r is not defined")


def test_validate_reports_non_utf8_with_byte_offset(tmp_path: Path) -> None:
    plan = tmp_path / "latin1.hcl"
    plan.write_bytes(b'target "a" {\n  label = "caf\xe9"\n}\n')
    proc = cloudboot("plan", "validate", plan)
    assert proc.returncode == 1
    assert proc.stdout.strip() == f"{plan}:2:15: not UTF-8 text (byte offset 27)"


def test_render_arm64_uses_ttyama0(tmp_path: Path) -> None:
    plan = tmp_path / "console.hcl"
    plan.write_text(CONSOLE_PLAN)
    arm = json.loads(cloudboot("plan", "render", plan, "--arch", "arm64").stdout)
    amd = json.loads(cloudboot("plan", "render", plan, "--arch", "amd64").stdout)
    assert arm["arch"] == "arm64"
    assert arm["targets"][0]["cmdline"] == "console=ttyAMA0 ro"
    assert amd["targets"][0]["cmdline"] == "console=ttyS0 ro"
    assert arm["targets"][0]["source"] == {
        "kind": "oci",
        "index": "reg.example/linux:6.6",
        "kernel": None,
        "initrd": None,
        "modules": None,
    }


def test_render_target_variant_meta_and_redaction(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"cloudboot": {"luks_passphrase": "s3cret-pass"}}))
    proc = cloudboot(
        "plan", "render", "plans/disks.hcl", "--arch", "amd64", "--target", "proxmox",
        "--meta", meta,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-pass" not in proc.stdout + proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert target["name"] == "proxmox"
    assert target["source"]["kind"] == "disk"
    assert target["source"]["luks_passphrase"] == "<redacted>"
    assert target["source"]["dataset"] == "rpool/ROOT/pve-1"

    rescue = cloudboot("plan", "render", "plans/oci.hcl", "--arch", "arm64", "--target", "rescue")
    assert json.loads(rescue.stdout)["targets"][0]["source"]["kernel"] == (
        "registry.example.com/boot/rescue-kernel:arm64"
    )


def test_render_errors_are_located_and_exit_nonzero(tmp_path: Path) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text(CONSOLE_PLAN)
    missing = cloudboot("plan", "render", plan, "--arch", "arm64", "--target", "nope")
    assert missing.returncode == 1
    assert 'no target "nope" for arch arm64' in missing.stderr
    bad_meta = tmp_path / "meta.json"
    bad_meta.write_text('{"a": ')
    meta_err = cloudboot("plan", "render", plan, "--arch", "amd64", "--meta", bad_meta)
    assert meta_err.returncode == 1
    assert f"error: {bad_meta}:1:7: metadata is not valid JSON" in meta_err.stderr
    broken = tmp_path / "broken.hcl"
    broken.write_text('target "a" {\n  index = "${local.x}"\n}\n')
    eval_err = cloudboot("plan", "render", broken, "--arch", "amd64")
    assert eval_err.returncode == 1
    assert f"error: {broken}:2:14: local.x is not defined" in eval_err.stderr
    assert "Traceback" not in eval_err.stderr + meta_err.stderr + missing.stderr


def test_validate_many_files_in_workers_reports_as_one_by_one(tmp_path: Path) -> None:
    """Past PARALLEL_FROM files the checks run in forked workers: the report (every
    error with its file:line:col, in file order, and the exit status) is exactly what the
    same files give checked one at a time in this process."""
    from watcher.cli.plan import PARALLEL_FROM, check_file

    good = (REPO / "plans" / "default.hcl").read_text()
    bad = 'default_target = "a"\ntarget "a" {\n  kernel = "r.io/k:1" "x"\n}\n'
    files = []
    for i in range(PARALLEL_FROM + 50):
        path = tmp_path / f"p{i:04d}.hcl"
        path.write_text(bad if i % 37 == 5 else f"# copy {i}\n{good}")
        files.append(path)
    proc = cloudboot("plan", "validate", "--json", tmp_path, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [Path(p["path"]).name for p in report["plans"]] == [f.name for f in files]
    expected = [[str(e) for e in check_file(f).errors] for f in files]
    got = [[f"{e['path']}:{e['line']}:{e['column']}: {e['message']}" for e in p["errors"]]
           for p in report["plans"]]  # fmt: skip
    assert got == expected
    assert sum(1 for errors in got if errors) == len([i for i in range(len(files)) if i % 37 == 5])
