"""Children do not inherit our secrets (issue 13): the environment allow-list of
publisher/run.py, tried with real children: ``env`` run and spawned, and a docker
credential helper that the publisher itself starts."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from publisher.auth import lookup_credentials
from publisher.run import run, spawn

SECRETS = {"COSIGN_PASSWORD": "cosign-pw-77", "REGISTRY_PASSWORD": "registry-pw-88"}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-99")
    monkeypatch.setenv("LC_TIME", "C")


def _assert_clean(text: str) -> None:
    for value in (*SECRETS.values(), "aws-99"):
        assert value not in text


@pytest.mark.usefixtures("secret_env")
def test_run_and_spawn_children_see_no_secrets(tmp_path: Path) -> None:
    seen = run(["env"]).stdout.decode()
    _assert_clean(seen)
    assert "PATH=" in seen and "LC_TIME=C" in seen  # what tools need still arrives
    # a value a child needs is passed on purpose, and only to that child
    assert "COSIGN_PASSWORD=given" in run(["env"], env={"COSIGN_PASSWORD": "given"}).stdout.decode()
    log = tmp_path / "daemon.log"
    with spawn(["sh", "-c", "env; exec sleep 30"], stdout=log):
        while "PATH=" not in log.read_text():
            time.sleep(0.05)
    _assert_clean(log.read_text())


@pytest.mark.usefixtures("secret_env")
def test_credential_helper_started_by_the_publisher_sees_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dump = tmp_path / "helper-env"
    helper = bindir / "docker-credential-dump"
    helper.write_text(f"#!/bin/sh\nenv > {dump}\nexit 1\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{Path('/usr/bin')}:{Path('/bin')}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "dump"}))
    lookup_credentials("reg.example:5000", config_path=config, env={})
    assert "PATH=" in dump.read_text()
    _assert_clean(dump.read_text())
