"""`cloudboot promote` against a real docker-registry; results read back with skopeo.

What a guest checks decides the asserts: DST's digest is SRC's (skopeo), a signature valid
under the workspace key names DST's repository (the guest's identity check) and carries
a version above the one DST held before (the guest's freshness floor).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry, local_registry
from tests.helpers import CLOUDBOOT, PLAN, skopeo_digest, skopeo_signatures, write_signed_workspace

ENV = {**os.environ, "COSIGN_PASSWORD": "pw"}


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUDBOOT), "-C", str(root), *args], capture_output=True, text=True, env=ENV
    )


def publish(root: Path, text: str) -> None:
    (root / "plans" / "demo.hcl").write_text(text)
    proc = cli(root, "publish")
    assert proc.returncode == 0, proc.stderr


def version(ref_name: str, digest: str, public: bytes) -> int:
    """The freshest version signed for ``digest`` in ``ref_name`` that names that repository."""
    docs = skopeo_signatures(ref_name, digest, public)
    assert docs, f"no valid signature for {digest} in {ref_name}"
    assert {d["critical"]["identity"]["docker-reference"] for d in docs} == {ref_name}
    return max(int(d["optional"]["dev.cloudboot.version"]) for d in docs)


@pytest.fixture
def ws(tmp_path: Path, registry: RunningRegistry) -> tuple[Path, bytes]:
    root = tmp_path / "ws"
    return root, write_signed_workspace(root, registry.address)


def test_promote_moves_by_digest_mounts_and_signs_fresher(
    ws: tuple[Path, bytes], registry: RunningRegistry
) -> None:
    root, public = ws
    staging = f"{registry.address}/cloudboot/demo"
    prod = f"{registry.address}/fleet/prod"
    publish(root, PLAN)
    first = skopeo_digest(f"{staging}:latest")
    assert first

    proc = cli(root, "promote", f"{staging}:latest", f"{prod}:stable", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["digest"], result["previous"], result["moved"]) == (first, None, True)
    assert result["signature"] == "re-signed"
    assert (result["mounted"], result["copied_bytes"]) == (2, 0)  # config + plan layer
    assert skopeo_digest(f"{prod}:stable") == first
    v1 = version(prod, first, public)
    assert v1 == result["version"]

    # a new staging publish, promoted: prod moves, signed above what it held
    publish(root, PLAN.replace("v=1", "v=2"))
    second = skopeo_digest(f"{staging}:latest")
    assert second and second != first
    proc = cli(root, "promote", f"{staging}:latest", f"{prod}:stable", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["previous"] == first
    assert skopeo_digest(f"{prod}:stable") == second
    assert version(prod, second, public) > v1

    # promoting again changes nothing
    proc = cli(root, "promote", f"{staging}:latest", f"{prod}:stable", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["moved"] is False


def test_carrying_an_older_signature_is_refused_and_the_tag_stays(
    ws: tuple[Path, bytes], registry: RunningRegistry
) -> None:
    """Without re-signing, promoting older content would be a rollback every guest refuses."""
    root, _ = ws
    repo = f"{registry.address}/cloudboot/demo"
    publish(root, PLAN)
    old = skopeo_digest(f"{repo}:latest")
    publish(root, PLAN.replace("v=1", "v=2"))
    new = skopeo_digest(f"{repo}:latest")
    assert old and new and old != new

    proc = cli(root, "promote", f"{repo}@{old}", f"{repo}:latest", "--no-sign")
    assert proc.returncode != 0
    assert "not fresher" in proc.stderr and f"{repo}:latest" in proc.stderr
    assert skopeo_digest(f"{repo}:latest") == new

    # the other direction is fresher: carried as it is, no new signature
    proc = cli(root, "promote", f"{repo}:latest", f"{repo}:canary", "--no-sign", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signature"] == "carried"
    assert skopeo_digest(f"{repo}:canary") == new

    # and carrying into another repository cannot work (the signature names this one)
    proc = cli(root, "promote", f"{repo}:latest", f"{registry.address}/x/y:z", "--no-sign")
    assert proc.returncode != 0 and "needs the signing key" in proc.stderr
    assert skopeo_digest(f"{registry.address}/x/y:z") is None


def test_unsigned_content_is_not_promoted(
    ws: tuple[Path, bytes], registry: RunningRegistry
) -> None:
    root, _ = ws
    src = f"{registry.address}/raw/plan:v1"
    (root / "plain.hcl").write_text(PLAN)
    proc = cli(root, "push", "plan", src, "-f", str(root / "plain.hcl"))  # no --key
    assert proc.returncode == 0, proc.stderr
    proc = cli(root, "promote", src, f"{registry.address}/fleet/prod:stable")
    assert proc.returncode != 0
    assert "no valid signature" in proc.stderr and src in proc.stderr
    assert skopeo_digest(f"{registry.address}/fleet/prod:stable") is None


def test_promote_to_another_registry_copies_and_signs_there(
    ws: tuple[Path, bytes], registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root, public = ws
    publish(root, PLAN)
    staging = f"{registry.address}/cloudboot/demo:latest"
    digest = skopeo_digest(staging)
    with local_registry(tmp_path_factory.mktemp("site-b")) as other:
        prod = f"{other.address}/fleet/prod"
        proc = cli(root, "promote", staging, f"{prod}:stable", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["mounted"] == 0 and result["copied_bytes"] > 0  # no mount across hosts
        assert skopeo_digest(f"{prod}:stable") == digest
        assert version(prod, str(digest), public) == result["version"]


def test_promote_a_multi_arch_index_mounts_every_entry(
    ws: tuple[Path, bytes], registry: RunningRegistry, tmp_path: Path
) -> None:
    """An index is promoted with its per-arch manifests, which land before it."""
    root, public = ws
    key = str(root / "cosign.key")
    reg = registry.address
    for arch in ("amd64", "arm64"):
        kernel = tmp_path / f"vmlinuz-{arch}"
        kernel.write_bytes(arch.encode() * 1000)
        proc = cli(root, "push", "artifact", f"{reg}/k/linux:{arch}", "--platform",
                   f"linux/{arch}", "--kernel", str(kernel), "--key", key)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    platforms = [f"--platform=linux/{a}={reg}/k/linux:{a}" for a in ("amd64", "arm64")]
    proc = cli(root, "push", "index", f"{reg}/k/linux:6.6", *platforms, "--key", key)
    assert proc.returncode == 0, proc.stderr
    index = skopeo_digest(f"{reg}/k/linux:6.6")
    proc = cli(root, "promote", f"{reg}/k/linux:6.6", f"{reg}/fleet/linux:stable", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["mounted"], result["copied_bytes"]) == (4, 0)  # 2 x (config + kernel)
    assert skopeo_digest(f"{reg}/fleet/linux:stable") == index
    version(f"{reg}/fleet/linux", str(index), public)
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg}/fleet/linux:stable"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    entries = json.loads(raw)["manifests"]
    assert len(entries) == 2
    for entry in entries:  # each per-arch manifest is in the target repository too
        assert skopeo_digest(f"{reg}/fleet/linux@{entry['digest']}") == entry["digest"]
