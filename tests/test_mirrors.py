"""`[publish].mirrors`: two real docker-registry instances, the second behind the fault proxy.

Tags are read back with skopeo straight from each registry (not through the proxy), so
what is asserted is what a guest on either site would see.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry, local_registry
from tests.faulty_proxy import FaultyProxy, faulty_proxy
from tests.helpers import (
    CLOUDBOOT,
    PLAN,
    skopeo_digest,
    skopeo_signature_ok,
    write_signed_workspace,
)

ENV = {**os.environ, "COSIGN_PASSWORD": "pw"}
REPO = "cloudboot/demo"


@pytest.fixture
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with local_registry(tmp_path_factory.mktemp("second")) as reg:
        yield reg


@pytest.fixture
def proxy(second: RunningRegistry) -> Iterator[FaultyProxy]:
    with faulty_proxy(second) as p:
        yield p


def workspace(root: Path, primary: str, mirror: str) -> bytes:
    public = write_signed_workspace(root, primary)
    (root / "cloudboot.toml").write_text(
        f'[registry]\nurl = "{primary}"\nretry_seconds = 1\n\n[publish]\nmirrors = ["{mirror}"]\n'
    )
    return public


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUDBOOT), "-C", str(root), *args], capture_output=True, text=True, env=ENV
    )


def publish(root: Path) -> tuple[int, dict[str, object], str]:
    proc = cli(root, "publish", "--json")
    (plan,) = json.loads(proc.stdout)["plans"]
    return proc.returncode, plan, proc.stderr


def test_a_publish_reaches_every_registry_or_none(
    tmp_path: Path, registry: RunningRegistry, second: RunningRegistry, proxy: FaultyProxy
) -> None:
    root = tmp_path / "ws"
    public = workspace(root, registry.address, proxy.address)
    rc, plan, err = publish(root)
    assert rc == 0, err
    assert plan["registries"] == {registry.address: "published", proxy.address: "published"}
    first = plan["digest"]
    for reg in (registry.address, second.address):
        assert skopeo_digest(f"{reg}/{REPO}:latest") == first
        assert skopeo_signature_ok(f"{reg}/{REPO}", str(first), public)

    # the mirror refuses its tag PUT: the primary's tag, already moved, is put back
    (root / "plans" / "demo.hcl").write_text(PLAN.replace("v=1", "v=2"))
    proxy.fail("PUT", rf"/v2/{REPO}/manifests/latest$", 500, times=-1)
    rc, plan, err = publish(root)
    assert rc != 0
    for reg in (registry.address, second.address):
        assert skopeo_digest(f"{reg}/{REPO}:latest") == first
    assert plan["status"] == "failed"
    assert plan["registries"] == {registry.address: "not moved", proxy.address: "failed"}
    error = str(plan["error"])
    assert error.startswith(f"{proxy.address}: moving {proxy.address}/{REPO}:latest failed")
    assert f"tags put back: {registry.address}/{REPO}:latest" in error
    # the new plan was uploaded and signed on the mirror: only its tag move failed
    assert proxy.seen("PUT", rf"/v2/{REPO}/manifests/sha256-[0-9a-f]{{64}}\.sig$")
    assert [e.injected for e in proxy.seen("PUT", rf"/v2/{REPO}/manifests/latest$")][-1]

    # the mirror is back: the same publish now moves both
    proxy.clear()
    rc, plan, err = publish(root)
    assert rc == 0, err
    second_digest = skopeo_digest(f"{registry.address}/{REPO}:latest")
    assert second_digest == plan["digest"] != first
    assert skopeo_digest(f"{second.address}/{REPO}:latest") == second_digest
    assert skopeo_signature_ok(f"{second.address}/{REPO}", str(second_digest), public)


def test_a_mirror_that_is_no_registry_name_is_refused(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "ws"
    workspace(root, registry.address, "https://mirror.example/v2")
    rc_proc = cli(root, "publish")
    assert rc_proc.returncode != 0
    assert "[publish].mirrors[0]" in rc_proc.stderr and "cloudboot.toml" in rc_proc.stderr
    assert skopeo_digest(f"{registry.address}/{REPO}:latest") is None


def test_mirrors_with_prune_is_refused_not_ignored(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "ws"
    workspace(root, registry.address, "127.0.0.1:1")
    proc = cli(root, "publish", "--prune")
    assert proc.returncode != 0 and "[publish].mirrors cannot be combined" in proc.stderr
    assert skopeo_digest(f"{registry.address}/{REPO}:latest") is None
