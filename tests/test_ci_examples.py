"""The CI examples in docs/ci/ run, write their summary, and keep credentials out of sight.

The GitLab job's script lines are run verbatim (as GitLab's shell runs them) in a real
git checkout whose ``origin`` carries a job token in its URL, against a real
docker-registry with htpasswd auth, logged in from the environment as the job's
variables do. Then every place a secret could leak is read back: stdout, stderr, the
report, the summary and the published manifests' annotations (with skopeo). The GitHub
workflow's publish line is run by tests/test_gitops.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry, local_registry
from publisher.run import run
from publisher.summary import render
from tests.helpers import PLAN, REPO, write_signed_workspace
from tests.registry_tls import PASSWORD, USER
from tests.test_gitops import git, without_canary

BIN = Path(sys.executable).parent
CI = REPO / "docs" / "ci"
COSIGN_PASSWORD = "cosign-Pa55-0f3e"
TOKEN = "glcbt-64_Zm9vYmFyc2VjcmV0dG9rZW4"
SECRET_VAR = re.compile(r"\$\{?\{?\s*(secrets\.\w+|\w*(PASSWORD|TOKEN|SECRET|KEY)\w*)")


def job_lines(text: str, key: str) -> list[str]:
    """The ``- command`` items of one list key (``script:``) of the GitLab job."""
    match = re.search(rf"^  {key}:\n((?:    - .*\n)+)", text, re.M)
    assert match, f"no {key} in the job"
    return [line.removeprefix("    - ") for line in match.group(1).splitlines()]


@dataclass(frozen=True)
class AuthRegistry:
    registry: RunningRegistry
    user: str = USER
    password: str = PASSWORD


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[AuthRegistry]:
    """docker-registry with htpasswd auth (plain HTTP: cloudboot speaks HTTP to loopback)."""
    htpasswd = tmp_path / "htpasswd"
    run(["htpasswd", "-iBc", htpasswd, USER], input=PASSWORD.encode())  # not in argv
    with local_registry(tmp_path / "auth-registry", htpasswd=htpasswd) as reg:
        yield AuthRegistry(reg)


def test_gitlab_job_publishes_summarises_and_leaks_no_credential(
    tmp_path: Path, secure: AuthRegistry
) -> None:
    root = tmp_path / "ws"
    write_signed_workspace(root, secure.registry.address, COSIGN_PASSWORD)
    (root / "plans" / "other.hcl").write_text(PLAN.replace("v=1", "other"))
    key_file = tmp_path / "ci-variable-COSIGN_KEY"  # GitLab's "File" variable
    (root / "cosign.key").rename(key_file)
    (root / ".gitignore").write_text("cosign.key\npublish*\n")
    git(root, "init", "-q", "-b", "main")
    git(
        root,
        "remote",
        "add",
        "origin",
        f"https://gitlab-ci-token:{TOKEN}@gitlab.example/me/plans.git",
    )
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "plans")

    text = (CI / "gitlab-ci.yml").read_text()
    lines = [line for line in job_lines(text, "before_script")
             if not line.startswith(("pip ", "apt-get "))]  # fmt: skip
    lines += [without_canary(line) if "publish" in line else line
              for line in job_lines(text, "script")]  # fmt: skip
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "COSIGN_KEY": str(key_file),
        "COSIGN_PASSWORD": COSIGN_PASSWORD,
        "REGISTRY_USERNAME": secure.user,
        "REGISTRY_PASSWORD": secure.password,
        "CI": "true",
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-c", "\n".join(lines)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((root / "publish.json").read_text())
    assert report["ok"] and {p["status"] for p in report["plans"]} == {"published"}

    summary = (root / "publish-summary.md").read_text()
    for plan in report["plans"]:
        assert (
            f"| `{plan['plan']}` | ✅ published | `{plan['ref']}` | `{plan['digest'][:19]}…`"
            in summary
        )
    # the formatter on the same real report writes the same table
    formatter = subprocess.run(
        [sys.executable, "-m", "publisher.summary", str(root / "publish.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert formatter.returncode == 0, formatter.stderr
    assert formatter.stdout == summary

    ref = f"{secure.registry.address}/cloudboot/demo:latest"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--creds",
         f"{secure.user}:{secure.password}", "--tls-verify=false", f"docker://{ref}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    annotations = json.loads(raw)["annotations"]
    assert annotations["org.opencontainers.image.source"] == "https://gitlab.example/me/plans.git"

    seen = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "publish.json": (root / "publish.json").read_text(),
        "summary": summary,
        "manifest": raw,
    }
    for secret in (TOKEN, secure.password, COSIGN_PASSWORD):
        for where, content in seen.items():
            assert secret not in content, f"{secret!r} leaked into {where}"


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_pass_secrets_only_through_the_environment(name: str) -> None:
    """No command line of a CI example expands a secret (argv is visible to every process
    on the runner); secrets appear only as environment mappings or in a shell builtin /
    file copy that writes the key file."""
    text = (CI / name).read_text()
    commands = re.findall(r"^\s*(?:- |run: )(?!\s*\w+:)(.*)$", text, re.M)
    commands += [
        m for block in re.findall(r"run: \|\n((?:\s{10}.*\n)+)", text) for m in block.splitlines()
    ]
    assert any("cloudboot" in c and "publish" in c for c in commands)
    for command in commands:
        if not SECRET_VAR.search(command) or command.lstrip().startswith("#"):
            continue
        words = command.split()
        assert words[0] in ("printf", "(umask"), f"{name}: secret on a command line: {command}"
    assert "--summary" in text


def test_summary_scrubs_url_credentials_and_escapes_the_table() -> None:
    doc = {
        "ok": False,
        "plans": [
            {"plan": "a|b.hcl", "ref": "r/a:latest", "status": "failed", "digest": None,
             "error": "push to https://bob:hunter2@reg.example/v2/ failed\nretry"},
            {"plan": "c.hcl", "ref": "r/c:latest", "status": "held", "digest": "sha256:" + "a" * 64,
             "canary": {"result": "kernel panic", "seconds": 41.2,
                        "tail": "fetch oci://u:tok@10.0.2.2/x\nKernel panic - not syncing"}},
        ],
    }  # fmt: skip
    text = render(doc)
    assert "hunter2" not in text and "tok@" not in text and "bob" not in text
    assert "https://reg.example/v2/" in text
    assert "`a\\|b.hcl`" in text and "failed<br>retry" in text
    assert "kernel panic (41 s)" in text and "Kernel panic - not syncing" in text
    assert text.startswith("### cloudboot publish: FAILED")


def test_summary_formatter_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"plans": 3}')
    proc = subprocess.run(
        [sys.executable, "-m", "publisher.summary", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "no plans list" in proc.stderr
