"""`cloudboot publish` (GitOps) against a real registry, in a real git checkout.

The command is taken verbatim from the GitHub Actions example in docs/ci/, so the
documented CI step is the one tested. Results are checked with skopeo.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry
from tests.helpers import (
    PLAN,
    REPO,
    skopeo_digest,
    skopeo_signature_ok,
    write_signed_workspace,
)

BIN = Path(sys.executable).parent


def ci_command() -> str:
    """The `cloudboot ... publish` line of the documented workflow."""
    text = (REPO / "docs" / "ci" / "github-actions.yml").read_text()
    match = re.search(r"^\s*run: (cloudboot .*publish.*)$", text, re.M)
    assert match, "the workflow must run cloudboot publish"
    return without_canary(match.group(1))


def without_canary(line: str) -> str:
    """The documented line minus ``--canary``: these workspaces have plans that do not
    boot and no recipe; the canary boot itself is tests/test_canary_qemu.py's."""
    assert " --canary" in line, "the CI example must run the canary"
    return line.replace(" --canary", "")


def git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def publish(root: Path) -> tuple[int, list[dict[str, object]], str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "COSIGN_PASSWORD": "pw",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "me/plans",
        "GITHUB_STEP_SUMMARY": str(root / "summary.md"),
    }
    # exactly how GitHub Actions runs a step with `shell: bash`
    argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", ci_command()]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, env=env)
    report = json.loads((root / "publish.json").read_text() or '{"plans": []}')["plans"]
    return proc.returncode, report, proc.stderr


@pytest.fixture
def repo(tmp_path: Path, registry: RunningRegistry) -> tuple[Path, bytes]:
    root = tmp_path / "ws"
    public = write_signed_workspace(root, registry.address)
    (root / "plans" / "other.hcl").write_text(PLAN.replace("v=1", "other"))
    (root / ".gitignore").write_text("cosign.key\n.cloudboot/\npublish.json\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "plans")
    return root, public


def by_plan(report: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(o["plan"]): o for o in report}


def test_publish_is_signed_annotated_and_idempotent(
    repo: tuple[Path, bytes], registry: RunningRegistry
) -> None:
    root, public = repo
    first_commit = git(root, "rev-parse", "HEAD")
    rc, report, err = publish(root)
    assert rc == 0, err
    outcomes = by_plan(report)
    assert {o["status"] for o in outcomes.values()} == {"published"}
    ref = f"{registry.address}/cloudboot/demo:latest"
    digest = skopeo_digest(ref)
    assert digest == outcomes["demo.hcl"]["digest"]
    assert skopeo_signature_ok(ref.rsplit(":", 1)[0], digest, public)
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
    ).stdout
    annotations = json.loads(raw)["annotations"]
    assert annotations["org.opencontainers.image.revision"] == first_commit
    assert annotations["org.opencontainers.image.source"] == "https://github.com/me/plans"
    summary = (root / "summary.md").read_text()  # the workflow's $GITHUB_STEP_SUMMARY
    assert f"| `demo.hcl` | ✅ published | `{ref}` | `{digest[:19]}…` |" in summary

    # again, nothing changed: nothing uploaded, reported as unchanged
    rc, report, err = publish(root)
    assert rc == 0, err
    assert {(o["status"], o["uploaded_bytes"]) for o in report} == {("unchanged", 0)}

    # a commit touching only other.hcl republishes only other.hcl
    (root / "plans" / "other.hcl").write_text(PLAN.replace("v=1", "other-2"))
    git(root, "commit", "-q", "-am", "other")
    rc, report, err = publish(root)
    assert rc == 0, err
    outcomes = by_plan(report)
    assert outcomes["demo.hcl"]["status"] == "unchanged"
    assert outcomes["other.hcl"]["status"] == "published"
    assert skopeo_digest(ref) == digest


def test_a_registry_failure_is_said_once(tmp_path: Path) -> None:
    """A CI log shows stdout and stderr together: the plan's failure is its outcome line
    once (it used to be an error log line as well), then the run's summary error."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = f"127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once it closes
    write_signed_workspace(tmp_path, closed)
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    proc = subprocess.run([BIN / "cloudboot", "-C", tmp_path, "publish"], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    both = proc.stdout + proc.stderr
    assert both.count(f"cannot reach registry {closed}") == 1, both
    assert "failed    demo.hcl: cannot reach registry" in proc.stdout
    assert proc.stderr.splitlines()[-1] == "error: 1 of 1 plans failed to publish"
    assert "publish failed" not in proc.stderr


def test_an_invalid_plan_publishes_nothing_and_fails(
    repo: tuple[Path, bytes], registry: RunningRegistry
) -> None:
    root, _ = repo
    (root / "plans" / "broken.hcl").write_text('default_target = "x"\n\ntarget "y" {\n}\n')
    rc, report, err = publish(root)
    assert rc != 0
    outcomes = by_plan(report)
    assert outcomes["broken.hcl"]["status"] == "invalid"
    assert str(outcomes["broken.hcl"]["error"]).startswith(f"{root / 'plans' / 'broken.hcl'}:")
    assert outcomes["demo.hcl"]["status"] == "skipped"
    assert skopeo_digest(f"{registry.address}/cloudboot/demo:latest") is None
    assert "plans failed to publish" in err
