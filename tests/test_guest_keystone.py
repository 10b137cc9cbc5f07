"""Keystone application credentials -> the metadata token, in the agent's whole pass
(tests/agent_harness.py) against a Keystone v3 token-API stand-in (tests/keystone_v3.py)
and a metadata service that records the Authorization header it got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest.agent import keystone
from tests.agent_harness import LEASE, _metadata_server, _plan, _run, machine
from tests.keystone_real import VENV_VARIABLE, real_keystone, venv
from tests.keystone_v3 import keystone_v3

__all__ = ["machine"]

CRED_ID = "6f9c2d1e5b4a43c8a1f0e7d6c5b4a392"
SECRET = "app-cred-S3cret-xyz"


def _cmdline(auth_url: str, md_url: str, secret: str) -> str:
    return (
        f"cloudboot.metadata.url={md_url} cloudboot.openstack.auth-url={auth_url}"
        f" cloudboot.openstack.app-cred-id={CRED_ID}"
        f" cloudboot.openstack.app-cred-secret={secret}"
    )


def test_the_keystone_token_is_the_metadata_token(machine: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    doc = json.dumps({"cloudboot": {"target": "other"}}).encode()
    with keystone_v3(CRED_ID, SECRET) as ks, _metadata_server(doc) as (md_url, seen):
        status, log, _system = _run(machine, _cmdline(ks.url, md_url, SECRET), lease=LEASE)
    assert status == 0, log
    assert len(ks.issued) == 1 and seen == [f"Bearer {ks.issued[0]}"]
    body = json.loads(ks.bodies[0])["auth"]["identity"]
    assert body == {
        "methods": ["application_credential"],
        "application_credential": {"id": CRED_ID, "secret": SECRET},
    }
    assert "metadata: cloudboot.target='other'" in log  # the document was used
    assert SECRET not in log and ks.issued[0] not in log


def test_a_refused_credential_is_a_metadata_warning_without_the_secret(machine: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    wrong = "not-the-S3cret-42"
    with keystone_v3(CRED_ID, SECRET) as ks, _metadata_server(b"{}") as (md_url, seen):
        status, log, _system = _run(machine, _cmdline(ks.url, md_url, wrong), lease=LEASE)
    assert status == 0, log  # like an unreachable metadata service: the cmdline's values
    assert seen == [] and ks.issued == []
    assert f"WARNING: metadata: {ks.url}/auth/tokens answered HTTP 401 Unauthorized" in log
    assert "requires authentication" in log
    assert wrong not in log and SECRET not in log


def test_half_configured_credentials_name_the_missing_knob() -> None:
    with pytest.raises(keystone.KeystoneError, match="app-cred-secret missing"):
        keystone.from_knobs(
            {"cloudboot.openstack.auth-url": "https://k/v3", "cloudboot.openstack.app-cred-id": "x"}
        )
    assert keystone.from_knobs({}) is None
    values = ("https://keystone.test/v3", "id-1", "sec-1")
    cred = keystone.from_knobs(dict(zip(keystone.KNOBS, values, strict=True)))
    assert cred is not None and cred.tokens_url == "https://keystone.test/v3/auth/tokens"
    assert "sec-1" not in repr(cred)


@pytest.mark.skipif(
    venv() is None, reason=f"no Keystone: set {VENV_VARIABLE} (tests/keystone_real.py)"
)
def test_a_real_keystone(machine: Path, tmp_path: Path) -> None:
    """The same pass against Keystone itself: its token reaches the metadata service, and
    a wrong secret is its own 401 shown as a warning without the secret."""
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    ks_venv = venv()
    assert ks_venv is not None
    with real_keystone(tmp_path / "keystone", ks_venv) as ks:
        with _metadata_server(b"{}") as (md_url, seen):
            cmdline = _cmdline(ks.url, md_url, ks.secret).replace(CRED_ID, ks.credential_id)
            status, log, _system = _run(machine, cmdline, lease=LEASE)
        assert status == 0, log
        assert len(seen) == 1 and seen[0].startswith("Bearer gAAAA")  # a Fernet token
        assert ks.secret not in log and seen[0][7:] not in log
        with _metadata_server(b"{}") as (md_url, seen):
            wrong = _cmdline(ks.url, md_url, "wrong-S3cret-9").replace(CRED_ID, ks.credential_id)
            status, log, _system = _run(machine, wrong, lease=LEASE)
        assert status == 0 and seen == []
        assert f"WARNING: metadata: {ks.url}/auth/tokens answered HTTP 401" in log, log
        assert "wrong-S3cret-9" not in log
