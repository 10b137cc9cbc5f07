"""The publisher's half of the trust chain (docs/trust-model.md): pins, freshness, secrets.

A plan's signature pins the digest of every tag the plan names (every arch), carries a
freshness version, is renewed when a pinned tag moves, and still verifies with an
independent sigstore verifier (skopeo's ``sigstoreSigned`` policy). Recorded URLs carry
no credentials.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from guest.contract import cosign, oci
from publisher.annotations import git_source, source_annotations, strip_userinfo
from publisher.localregistry import RunningRegistry
from publisher.pins import host_view, plan_refs, resolve_pins
from publisher.push import publish_plan, push_artifact
from publisher.registry import RegistryClient
from publisher.run import run
from publisher.signing import SigningKey, generate_key_pair, parse_private_key
from publisher.sigtag import existing_signatures
from tests.helpers import skopeo_signature_ok


def _key() -> tuple[SigningKey, bytes]:
    private, public = generate_key_pair(b"")
    return parse_private_key(private, b""), public


def _artifact(tmp: Path, registry: RunningRegistry, repo: str, arch: str, data: bytes) -> str:
    (tmp / "k").write_bytes(data)
    ref = oci.parse_ref(f"{registry.address}/{repo}")
    return push_artifact(RegistryClient(), ref, arch, tmp / "k").digest


def _plan_text(guest_registry: str, digest: str) -> str:
    return f"""
default_target = "k"
target "k" {{
  arch   = "amd64"
  kernel = "{guest_registry}/kernels/amd:1"
}}
target "k" {{
  arch   = "arm64"
  kernel = "{guest_registry}/kernels/arm:1"
  initrd = "{guest_registry}/kernels/arm@{digest}"
}}
target "gone" {{
  kernel = "registry.invalid:5000/kernels/none:1"
}}
target "s" {{
  subplan = "{guest_registry}/plans/sub"
}}
"""


def test_tags_that_do_not_resolve_are_one_warning_per_plan_grouped_by_why(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """The example plans name ten tags on a registry that does not exist: a user starting
    `up` gets one line per plan, not one per tag, and still sees every ref and why."""
    amd = _artifact(tmp_path, registry, "kernels/amd:1", "amd64", b"amd kernel")
    refs = [f"{registry.address}/kernels/amd:1", f"{registry.address}/kernels/gone:1",
            "registry.invalid:5000/boot/a:1", "registry.invalid:5000/boot/b:2"]  # fmt: skip
    with capture_logs() as logs:
        pins = resolve_pins(RegistryClient(), refs, plan="menu.hcl")
    assert pins == {refs[0]: amd}
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["plan"] == "menu.hcl" and warning["count"] == 3
    assert "cosign=enforce" in warning["event"]
    why = warning["why"]
    assert why["no such manifest yet"] == [refs[1]]
    (unreachable,) = [reason for reason in why if "registry.invalid" in reason]
    assert why[unreachable] == refs[2:] and unreachable.startswith("cannot resolve it: ")


def _signed(registry: RunningRegistry, key: SigningKey, digest: str) -> list[cosign.SignedPayload]:
    ref = oci.parse_ref(f"{registry.address}/plans/web")
    _, pairs = existing_signatures(RegistryClient(), ref, digest)
    public = cosign.load_public_key(key.public_pem)
    return [
        cosign.parse_payload(data)
        for data, sig in pairs
        if cosign.verify_signature(public, data, sig)
    ]


def test_refs_of_every_arch_are_pinned_and_renewed_when_a_tag_moves(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    key, _public = _key()
    amd = _artifact(tmp_path, registry, "kernels/amd:1", "amd64", b"amd kernel")
    arm = _artifact(tmp_path, registry, "kernels/arm:1", "arm64", b"arm kernel")
    # the plan names the registry as a QEMU guest sees the host: 10.0.2.2:<port>
    guest = "10.0.2.2:" + registry.address.rsplit(":", 1)[1]
    plan = tmp_path / "plan.hcl"
    plan.write_text(_plan_text(guest, arm))
    refs = [str(r) for r in plan_refs(plan.read_text(), str(plan))]
    assert refs == [
        f"{guest}/kernels/amd:1",
        f"{guest}/kernels/arm:1",
        "registry.invalid:5000/kernels/none:1",
    ]  # both arches; no digest ref, no subplan
    assert host_view(oci.parse_ref(refs[0])).registry == registry.address
    ref = oci.parse_ref(f"{registry.address}/plans/web:latest")
    first = publish_plan(RegistryClient(), ref, plan, key)
    (signed,) = _signed(registry, key, first.digest)
    assert signed.pins == {refs[0]: amd, refs[1]: arm}  # the unreachable one is not pinned
    assert isinstance(signed.version, int)

    again = publish_plan(RegistryClient(), ref, plan, key)
    assert not again.uploaded and _signed(registry, key, first.digest) == [signed]

    moved = _artifact(tmp_path, registry, "kernels/amd:1", "amd64", b"new amd kernel")
    renewed = publish_plan(RegistryClient(), ref, plan, key)
    assert renewed.digest == first.digest and renewed.uploaded  # same plan, new signature
    (newer,) = _signed(registry, key, first.digest)  # ours replaced, not piled up
    assert newer.pins == {refs[0]: moved, refs[1]: arm}
    assert newer.version is not None and signed.version is not None
    assert newer.version > signed.version


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_payload_with_pins_still_reads_as_cosign_simple_signing(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Fetched by skopeo, checked by ``cryptography``: the signature verifies, the critical
    section is cosign's exactly, and ``optional`` is the JSON object cosign's Go struct
    (``map[string]interface{}``) and containers/image read. (Debian's skopeo has its
    sigstore policy support disabled, so it cannot run the whole cosign check itself.)"""
    key, public = _key()
    _artifact(tmp_path, registry, "kernels/amd:1", "amd64", b"amd kernel")
    plan = tmp_path / "plan.hcl"
    plan.write_text(f'target "k" {{\n  kernel = "{registry.address}/kernels/amd:1"\n}}\n')
    ref = oci.parse_ref(f"{registry.address}/plans/web:latest")
    digest = publish_plan(RegistryClient(), ref, plan, key).digest
    assert skopeo_signature_ok(ref.name, digest, public)
    (signed,) = _signed(registry, key, digest)
    _, pairs = existing_signatures(RegistryClient(), ref, digest)
    doc = json.loads(pairs[0][0])
    assert list(doc) == ["critical", "optional"] and isinstance(doc["optional"], dict)
    assert doc["critical"] == {
        "identity": {"docker-reference": ref.name},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature",
    }
    assert set(signed.pins) == {f"{registry.address}/kernels/amd:1"}


def test_recorded_source_url_carries_no_credentials(tmp_path: Path) -> None:
    secret = "glcbt-64_SECRETTOKEN"
    run(["git", "init", "-q", tmp_path])
    run(["git", "-C", tmp_path, "remote", "add", "origin",
         f"https://gitlab-ci-token:{secret}@gitlab.example.com/group/plans.git"])  # fmt: skip
    (tmp_path / "f").write_text("x")
    run(["git", "-C", tmp_path, "add", "f"])
    run(["git", "-C", tmp_path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"])
    notes = source_annotations(tmp_path, env={})
    assert notes["org.opencontainers.image.source"] == "https://gitlab.example.com/group/plans.git"
    assert not any(secret in v for v in notes.values())
    # `cloudboot publish` records the same source per plan
    assert git_source(tmp_path, {}) == "https://gitlab.example.com/group/plans.git"
    assert strip_userinfo("git@github.com:me/plans.git") == "git@github.com:me/plans.git"
    assert strip_userinfo("ssh://u:p@h:2222/x") == "ssh://h:2222/x"
    assert strip_userinfo("https://h/x") == "https://h/x"


def test_a_publisher_with_a_slow_clock_still_signs_above_the_current_tag(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Laptop then CI: the second publisher's clock is an hour behind. Its signature must
    still be newer than the one the tag held, or every guest would refuse the new plan."""
    key, _public = _key()
    ref = oci.parse_ref(f"{registry.address}/plans/web:latest")
    plan = tmp_path / "plan.hcl"
    plan.write_text('target "a" {\n  kernel = "127.0.0.1:9/k:1"\n}\n')
    first = publish_plan(RegistryClient(), ref, plan, key)
    (old,) = _signed(registry, key, first.digest)
    assert old.version is not None
    behind = time.time_ns() - 3600 * 10**9
    monkeypatch.setattr("publisher.pins.time.time_ns", lambda: behind)
    plan.write_text('target "a" {\n  kernel = "127.0.0.1:9/k:2"\n}\n')
    second = publish_plan(RegistryClient(), ref, plan, key)
    (new,) = _signed(registry, key, second.digest)
    assert new.version == old.version + 1
