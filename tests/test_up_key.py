"""`cloudboot up` and the signing key it makes, run as a user runs it twice in a row from
a script (no terminal, no $COSIGN_PASSWORD): the second run opens the key the first one
made with an empty password instead of failing at the publish, and a key with a real
password still stops `up` with an error that names the key file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from publisher.localregistry import free_port
from tests.helpers import CLOUDBOOT

PUBLISHED = "plans published or unchanged"


def make_workspace(root: Path) -> Path:
    subprocess.run([CLOUDBOOT, "init", str(root)], check=True, capture_output=True)
    config = root / "cloudboot.toml"
    text = config.read_text().replace(
        "[registry]\n", f'[registry]\nurl = "127.0.0.1:{free_port()}"\nserver = "builtin"\n', 1
    )
    config.write_text(text)
    return root


def up_until_published(root: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`up --no-vm` with no terminal, stopped (SIGINT) once the publish is reported."""
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
        if PUBLISHED in line or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    return proc.wait(), "".join(seen) + out, err


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
