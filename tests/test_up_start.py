"""`cloudboot up`'s first steps as a script meets them (no terminal, no $COSIGN_PASSWORD).

- The signing key: a second run opens the key the first one made with an empty password
  instead of failing at the publish, as does a `cloudboot publish` from a script (or the
  watcher's service), and a key with a real password still stops them with an error
  that names the key file.
- The registry port: something that is not a registry on [registry].url stops `up`
  before it publishes, naming the key and what answered (it used to be taken for a
  registry, and the publish failed with "fix the plans above"); a registry that refuses
  the publish is named as the reason instead of the plans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from publisher.localregistry import RunningRegistry, free_port
from tests.helpers import CLOUDBOOT
from tests.not_a_registry import fake_server

PUBLISHED = "plans published or unchanged"


def make_workspace(root: Path, port: int | None = None) -> Path:
    subprocess.run([CLOUDBOOT, "init", str(root)], check=True, capture_output=True)
    config = root / "cloudboot.toml"
    url = f"127.0.0.1:{port or free_port()}"  # a fresh port: `up` starts its own registry
    text = config.read_text().replace(
        "[registry]\n", f'[registry]\nurl = "{url}"\nserver = "builtin"\n', 1
    )
    config.write_text(text)
    return root


def up_until_published(root: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`up --no-vm` with no terminal, stopped (SIGINT) once every plan is published; a
    failed publish is left to end `up` on its own (a SIGINT then would race its error)."""
    proc = subprocess.Popen(
        [CLOUDBOOT, "-C", str(root), "up", "--no-vm", "--no-preflight"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        done, _, total = line.partition(" ")[0].partition("/")
        if PUBLISHED in line and done != total:
            break
        if PUBLISHED in line or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    return proc.wait(), "".join(seen) + out, err


def up_on(tmp_path: Path, address: str) -> tuple[int, str, str]:
    root = make_workspace(tmp_path / "ws", port=int(address.rpartition(":")[2]))
    return up_until_published(root, {**os.environ, "COSIGN_PASSWORD": ""})


def test_a_second_up_without_a_password_opens_the_key_the_first_made(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    _, out, err = up_until_published(root, env)
    assert "created signing key" in out and PUBLISHED in out, err
    assert "creating the signing key with an empty password" in err
    _, out, err = up_until_published(root, env)
    assert PUBLISHED in out, err
    assert "no terminal to ask for the key password" not in err
    assert "created signing key" not in out


def test_a_key_with_a_real_password_still_needs_it_and_the_error_names_it(
    tmp_path: Path,
) -> None:
    root = make_workspace(tmp_path / "ws")
    key = root / "cosign.key"
    made = {**os.environ, "COSIGN_PASSWORD": "a real one"}
    subprocess.run([CLOUDBOOT, "-C", str(root), "key", "generate"], check=True,
                   capture_output=True, env=made)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    code, out, err = up_until_published(root, env)
    assert code != 0 and PUBLISHED not in out
    assert f"{key}: no terminal to ask for the key password: set $COSIGN_PASSWORD" in err


def test_publish_from_a_script_opens_an_empty_password_key_and_names_a_real_ones(
    tmp_path: Path, shared_registry: RunningRegistry
) -> None:
    root = make_workspace(tmp_path / "ws", port=shared_registry.port)
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}

    def with_key(password: str) -> subprocess.CompletedProcess[str]:
        subprocess.run([CLOUDBOOT, "-C", str(root), "key", "generate", "--force"], check=True,
                       capture_output=True, env={**env, "COSIGN_PASSWORD": password})  # fmt: skip
        return subprocess.run([CLOUDBOOT, "-C", str(root), "publish"], capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL)  # fmt: skip

    empty = with_key("")
    assert empty.returncode == 0 and "1/1 " + PUBLISHED in empty.stdout, empty.stderr
    real = with_key("a real one")
    assert real.returncode != 0
    assert f"{root / 'cosign.key'}: no terminal to ask for the key password" in real.stderr


def test_a_web_server_on_the_registry_port_stops_up_before_the_publish(tmp_path: Path) -> None:
    with fake_server(404) as address:
        code, out, err = up_on(tmp_path, address)
    assert code != 0 and PUBLISHED not in out and "fix the plans" not in err
    assert (
        f"[registry].url: something listens on {address} but it is not an OCI registry"
        " (GET /v2/ answered HTTP 404); stop it, or give [registry].url another port"
    ) in err


def test_a_registry_that_refuses_the_publish_is_not_called_a_plan_error(tmp_path: Path) -> None:
    with fake_server(401, "application/json") as address:  # wants credentials nobody gave
        code, out, err = up_on(tmp_path, address)
    assert code != 0 and f"registry: using the one already listening on {address}" in out
    assert "0/1 plans published or unchanged" in out and "fix the plans" not in err
    assert f"a publish to {address} failed: see why above, then run" in err
