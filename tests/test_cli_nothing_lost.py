"""Nothing is ever lost: the user's files are byte-identical after a refused command, a
refused push leaves no tag, and Ctrl-C ends any command with 130 and no traceback.

Each case runs ``cloudboot`` as a separate process, as a user meets it, against a real
docker-registry (plain, or TLS + htpasswd for credentials).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry
from tests.not_a_registry import fake_server
from tests.registry_tls import TlsRegistry, tls_registry

CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))},
    "COSIGN_PASSWORD": "pw",
    "NO_COLOR": "1",
}


def cli(*argv: str, cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [CLOUDBOOT, *argv], input=stdin, capture_output=True, text=True, cwd=cwd,
        env={**ENV, **env}, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def tags(registry: RunningRegistry, repository: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list") as resp:
            return list(json.load(resp).get("tags") or [])
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return []


# --- init --------------------------------------------------------------------------------


def test_init_keeps_existing_plan_recipe_and_gitignore(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "plans").mkdir(parents=True)
    (ws / "kernel").mkdir()
    (ws / "plans/default.hcl").write_text('target "mine" {\n  kernel = "r.io/k:1"\n}\n')
    (ws / "kernel/recipe.toml").write_text("# my recipe\n")
    (ws / ".gitignore").write_bytes(b"node_modules")  # no trailing newline
    before = snapshot(ws)

    proc = cli("init", str(ws), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(ws)
    for rel in ("plans/default.hcl", "kernel/recipe.toml"):
        assert after[rel] == before[rel], rel
    assert after[".gitignore"].startswith(b"node_modules\n")
    assert b"\ncosign.key\n" in after[".gitignore"]
    assert "kept existing" in proc.stdout and "cosign.key" in proc.stdout
    assert (ws / "cloudboot.toml").is_file()

    # --force replaces cloudboot.toml only, as its help says
    (ws / "cloudboot.toml").write_text("[registry]\n")
    before = snapshot(ws)
    proc = cli("init", str(ws), "--force", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["written"] == [str((ws / "cloudboot.toml").absolute())]
    after = snapshot(ws)
    changed = {rel for rel in before if before[rel] != after[rel]}
    assert changed == {"cloudboot.toml"}


def test_init_refused_changes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert cli("init", str(ws), cwd=tmp_path).returncode == 0
    (ws / "plans/default.hcl").write_text("# my edits\n")
    before = snapshot(ws)
    proc = cli("init", str(ws), cwd=tmp_path)
    assert proc.returncode == 1 and "already a cloudboot workspace" in proc.stderr
    assert snapshot(ws) == before


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs: a real ENOSPC (needs root and mount, as on the CI machines)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_build_on_a_full_disk_names_the_path_and_keeps_the_old_iso(
    tmp_path: Path, small_disk: Path
) -> None:
    """boot.iso (about 60 MiB) written where 12 MiB are free: said once, with the path and
    what to do, exit 1, the previous boot.iso untouched and no temporary file left. Before,
    the error named no path and pyfatfs printed two more tracebacks at exit."""
    ws = tmp_path / "ws"
    assert cli("init", str(ws), cwd=tmp_path).returncode == 0
    assert cli("key", "generate", cwd=ws).returncode == 0
    iso = small_disk / "boot.iso"
    iso.write_bytes(b"the previous image")
    proc = cli("build", "--iso", str(iso), cwd=ws)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {iso}: cannot write boot.iso: No space left on device; the disk is full:"
        " free space or choose another path"
    ], proc.stderr
    assert "Exception ignored" not in proc.stderr
    assert iso.read_bytes() == b"the previous image"
    assert [p.name for p in small_disk.rglob("*") if p.is_file()] == ["boot.iso"]


# --- key generate ------------------------------------------------------------------------


def test_key_generate_onto_its_own_public_key_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_bytes(b"my precious private key")
    proc = cli("key", "generate", "-o", "k.pub", cwd=tmp_path)
    assert proc.returncode == 2 and "both" in proc.stderr
    assert (tmp_path / "k.pub").read_bytes() == b"my precious private key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    # even with --force: one path for two keys is never right
    proc = cli("key", "generate", "-o", "k.pub", "--force", cwd=tmp_path)
    assert proc.returncode == 2
    assert (tmp_path / "k.pub").read_bytes() == b"my precious private key"


def test_key_generate_next_to_an_existing_public_key_writes_neither(tmp_path: Path) -> None:
    (tmp_path / "cosign.pub").write_bytes(b"someone else's public key")
    proc = cli("key", "generate", "-o", "cosign.key", cwd=tmp_path)
    assert proc.returncode == 1 and "cosign.pub" in proc.stderr
    assert not (tmp_path / "cosign.key").exists()
    assert (tmp_path / "cosign.pub").read_bytes() == b"someone else's public key"


def test_key_generate_json_and_mode(tmp_path: Path) -> None:
    proc = cli("key", "generate", "-o", "sub/k.key", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == {
        "ok": True,
        "private_key": str(tmp_path / "sub/k.key"),
        "public_key": str(tmp_path / "sub/k.pub"),
    }
    assert (tmp_path / "sub/k.key").stat().st_mode & 0o777 == 0o600


# --- refused pushes leave no tag ---------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, shared_registry: RunningRegistry) -> Path:
    ws = tmp_path / "ws"
    assert cli("init", str(ws), cwd=tmp_path).returncode == 0
    repo = tmp_path.name.lower().replace("_", "-")[:40]
    (ws / "cloudboot.toml").write_text(
        f'[registry]\nurl = "{shared_registry.address}"\nretry_seconds = 600\n'
        f'[publish]\nref = "{{registry}}/{repo}/{{name}}:t"\n'
    )
    return ws


def test_two_plans_on_one_ref_push_nothing(
    workspace: Path, shared_registry: RunningRegistry
) -> None:
    (workspace / "plans/sub").mkdir()
    plan = (workspace / "plans/default.hcl").read_text()
    (workspace / "plans/sub/default.hcl").write_text(plan)
    (workspace / "plans/sub-default.hcl").write_text(plan)
    repo = workspace.parent.name.lower().replace("_", "-")[:40]
    for argv in (["publish"], ["push", "plan", "-f", "plans/sub-default.hcl"]):
        proc = cli(*argv, cwd=workspace)
        assert proc.returncode == 1 and "would both publish" in proc.stderr, proc.stderr
    assert tags(shared_registry, f"{repo}/sub-default") == []
    assert tags(shared_registry, f"{repo}/default") == []


def test_publish_json_is_one_object(workspace: Path) -> None:
    assert cli("key", "generate", cwd=workspace).returncode == 0
    proc = cli("publish", "--json", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and [p["plan"] for p in doc["plans"]] == ["default.hcl"]


# --- Ctrl-C ------------------------------------------------------------------------------


def _start(ws: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLOUDBOOT, *argv], cwd=ws, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for_retry(proc: subprocess.Popen[str]) -> str:
    """Read stderr until the push is retrying (so it is deep in the HTTP layer)."""
    assert proc.stderr is not None
    seen = ""
    while "registry retry" not in seen:
        line = proc.stderr.readline()
        assert line, f"ended before retrying: {seen}"
        seen += line
    return seen


def test_ctrl_c_during_retries_ends_with_130(workspace: Path) -> None:
    """A registry answering 503 with a 600 s retry bound: Ctrl-C ends the push at once
    (not after the bound), exit 130, one line, no traceback and no tag."""
    with fake_server(503, "application/json") as addr:
        proc = _start(workspace, "push", "plan", f"{addr}/me/plan:t")
        _wait_for_retry(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # the retry bound is 600 s
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("interrupted")


def test_second_ctrl_c_ends_without_a_traceback(workspace: Path) -> None:
    with fake_server(503, "application/json") as addr:
        proc = _start(workspace, "push", "plan", f"{addr}/me/plan:t")
        _wait_for_retry(proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted" in err


# --- login / --authfile against a registry with htpasswd --------------------------------------


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[TlsRegistry]:
    with tls_registry(tmp_path / "tls") as reg:
        yield reg


def test_login_authfile_push_logout(tmp_path: Path, secure: TlsRegistry) -> None:
    ws = tmp_path / "ws"
    assert cli("init", str(ws), cwd=tmp_path).returncode == 0
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {"other.example": {"auth": "eDp5"}}, "x": 1}))
    addr = secure.registry.address
    ref = f"{addr}/me/plan:t"
    tls = ["--no-plain-http", "--ca-bundle", str(secure.ca)]

    anonymous = cli("push", "plan", ref, *tls, "--authfile", str(auth), cwd=ws)
    assert anonymous.returncode == 1 and "cloudboot login" in anonymous.stderr

    login = cli("login", addr, "-u", secure.user, "--password-stdin", "--authfile", str(auth),
                cwd=ws, stdin=secure.password + "\n")  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert secure.password not in login.stdout + login.stderr
    doc = json.loads(auth.read_text())
    assert doc["x"] == 1 and "other.example" in doc["auths"]  # the rest of the file is kept
    assert auth.stat().st_mode & 0o777 == 0o600

    pushed = cli("push", "plan", ref, *tls, "--authfile", str(auth), cwd=ws)
    assert pushed.returncode == 0, pushed.stderr
    # REGISTRY_AUTH_FILE is podman's and skopeo's way to say the same
    again = cli("push", "plan", ref, *tls, cwd=ws, REGISTRY_AUTH_FILE=str(auth))
    assert again.returncode == 0, again.stderr

    out = cli("logout", addr, "--authfile", str(auth), cwd=ws)
    assert out.returncode == 0 and "Removed" in out.stdout
    assert addr not in json.loads(auth.read_text())["auths"]
    refused = cli("push", "plan", ref, *tls, "--authfile", str(auth), cwd=ws)
    assert refused.returncode == 1 and "401" in refused.stderr


@pytest.fixture
def pass_store(tmp_path: Path) -> dict[str, str]:
    """A real `pass` store (gpg key without passphrase) for docker-credential-pass."""
    env = {"GNUPGHOME": str(tmp_path / "gnupg"), "PASSWORD_STORE_DIR": str(tmp_path / "store")}
    Path(env["GNUPGHOME"]).mkdir(mode=0o700)
    full = {**ENV, **env}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "cloudboot test <t@example>",
         "default", "default", "never"], env=full, check=True, capture_output=True,
    )  # fmt: skip
    listing = subprocess.run(["gpg", "--list-keys", "--with-colons"], env=full, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    fingerprint = next(x.split(":")[9] for x in listing.splitlines() if x.startswith("fpr"))
    subprocess.run(["pass", "init", fingerprint], env=full, check=True, capture_output=True)
    return env


def test_login_through_the_credential_helper(
    tmp_path: Path, secure: TlsRegistry, pass_store: dict[str, str]
) -> None:
    """credsStore = "pass": the password goes to docker-credential-pass, never the file."""
    ws = tmp_path / "ws"
    assert cli("init", str(ws), cwd=tmp_path).returncode == 0
    auth = tmp_path / "config.json"
    auth.write_text(json.dumps({"credsStore": "pass"}))
    addr = secure.registry.address
    tls = ["--no-plain-http", "--ca-bundle", str(secure.ca), "--authfile", str(auth)]

    login = cli("login", addr, "-u", secure.user, "--password-stdin", "--authfile", str(auth),
                cwd=ws, stdin=secure.password + "\n", **pass_store)  # fmt: skip
    assert login.returncode == 0 and "docker-credential-pass" in login.stdout, login.stderr
    assert secure.password not in auth.read_text()
    pushed = cli("push", "plan", f"{addr}/me/plan:t", *tls, cwd=ws, **pass_store)
    assert pushed.returncode == 0, pushed.stderr

    assert cli("logout", addr, "--authfile", str(auth), cwd=ws, **pass_store).returncode == 0
    refused = cli("push", "plan", f"{addr}/me/plan:u", *tls, cwd=ws, **pass_store)
    assert refused.returncode == 1 and "401" in refused.stderr
