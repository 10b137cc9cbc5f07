"""publisher.push and `cloudboot push`: artifacts exactly as docs/wire-formats.md §2 has
them, read back with skopeo; signatures checked by an independent cosign v2 verifier
written here with ``cryptography``; unchanged re-publish sends nothing; invalid plans
send nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guest.contract import cosign
from guest.contract.oci import digest_of, parse_ref
from guest.contract.pubkey import load_public_key
from publisher.localregistry import RunningRegistry
from publisher.plancheck import InvalidPlanError
from publisher.push import publish_plan, push_artifact, push_index
from publisher.refsign import verify_ref
from publisher.registry import RegistryClient
from publisher.run import run
from publisher.signing import SigningKey, generate_key_pair, parse_private_key

BIN = Path(sys.executable).parent
PLAN = """default_target = "debian"
target "debian" {
  label   = "Debian"
  kernel  = "127.0.0.1:5000/kernels/debian:6.1"
  cmdline = ["console=ttyS0", "quiet"]
}
"""


def skopeo_raw(registry: RunningRegistry, ref: str) -> dict[str, Any]:
    out = run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.address}/{ref}"]
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def new_key() -> tuple[SigningKey, bytes]:
    private_pem, public_pem = generate_key_pair(b"pw")
    return parse_private_key(private_pem, b"pw"), public_pem


def cosign_v2_check(registry: RunningRegistry, repo: str, digest: str, public_pem: bytes) -> None:
    """An independent cosign v2 keyed check: signature manifest -> payload -> ECDSA verify.

    Raises on any failure; written from the format description, sharing no code with ours.
    """
    hexpart = digest.split(":", 1)[1]
    sig_manifest = skopeo_raw(registry, f"{repo}:sha256-{hexpart}.sig")
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for layer in sig_manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        blob = requests.get(f"{registry.url}/v2/{repo}/blobs/{layer['digest']}", timeout=10)
        payload = blob.content
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        try:
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        claims = json.loads(payload)
        assert claims["critical"]["type"] == "cosign container image signature"
        if claims["critical"]["image"]["docker-manifest-digest"] == digest:
            assert claims["critical"]["identity"]["docker-reference"] == (
                f"{registry.address}/{repo}"
            )
            return
    raise AssertionError(f"no valid signature for {digest}")


def test_signed_plan_has_the_spec_media_types(registry: RunningRegistry, tmp_path: Path) -> None:
    plan = tmp_path / "site.hcl"
    plan.write_text(PLAN)
    key, public_pem = new_key()
    client = RegistryClient()
    ref = parse_ref(f"oci://{registry.address}/me/plan:prod")
    result = publish_plan(client, ref, plan, key)
    assert str(result) == f"{registry.address}/me/plan:prod@{result.digest}"
    raw = skopeo_raw(registry, "me/plan:prod")
    assert raw["schemaVersion"] == 2
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw["config"]["mediaType"] == "application/vnd.cloud-boot.boot.config.v1+json"
    assert raw["config"]["digest"] == digest_of(b'{"created":null}')
    [layer] = raw["layers"]
    assert layer["mediaType"] == "application/vnd.cloud-boot.plan.v1+hcl"
    assert layer["annotations"] == {"org.opencontainers.image.title": "site.hcl"}
    assert layer["digest"] == digest_of(PLAN.encode())
    manifest_bytes = run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.address}/me/plan:prod",
        ]
    ).stdout
    assert digest_of(manifest_bytes) == result.digest
    assert b" " not in manifest_bytes  # compact JSON
    cosign_v2_check(registry, "me/plan", result.digest, public_pem)


def test_tampering_is_rejected_by_the_independent_check(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text(PLAN)
    key, public_pem = new_key()
    client = RegistryClient()
    result = publish_plan(client, parse_ref(f"{registry.address}/me/t"), plan, key)
    cosign_v2_check(registry, "me/t", result.digest, public_pem)
    _, other_pem = new_key()
    with pytest.raises(AssertionError, match="no valid signature"):
        cosign_v2_check(registry, "me/t", result.digest, other_pem)  # wrong key
    # another digest: move the signature to a different manifest's .sig tag
    plan.write_text(PLAN.replace("quiet", "loud"))
    other = publish_plan(client, parse_ref(f"{registry.address}/me/t:other"), plan, None)
    hexsrc, hexdst = result.digest.split(":")[1], other.digest.split(":")[1]
    run(
        [
            "skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{registry.address}/me/t:sha256-{hexsrc}.sig",
            f"docker://{registry.address}/me/t:sha256-{hexdst}.sig",
        ]
    )  # fmt: skip
    with pytest.raises(AssertionError, match="no valid signature"):
        cosign_v2_check(registry, "me/t", other.digest, public_pem)
    with pytest.raises(cosign.DigestMismatchError):  # and ours agrees
        verify_ref(client, parse_ref(f"{registry.address}/me/t:other"), load_public_key(public_pem))
    # changed payload: same signature over a payload naming the other digest
    sig_manifest = skopeo_raw(registry, f"me/t:sha256-{hexsrc}.sig")
    payload = requests.get(
        f"{registry.url}/v2/me/t/blobs/{sig_manifest['layers'][0]['digest']}", timeout=10
    ).content
    forged = payload.replace(result.digest.encode(), other.digest.encode())
    signature = base64.b64decode(
        sig_manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
    )
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    with pytest.raises(InvalidSignature):
        public.verify(signature, forged, ec.ECDSA(hashes.SHA256()))


def test_unchanged_republish_sends_nothing(registry: RunningRegistry, tmp_path: Path) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text(PLAN)
    key, _ = new_key()
    ref = parse_ref(f"{registry.address}/me/same:latest")
    first = publish_plan(RegistryClient(), ref, plan, key)
    assert first.uploaded and first.uploaded_bytes > 0
    client = RegistryClient()  # a fresh process would start like this: no caches
    methods: list[str] = []
    client.session.hooks["response"].append(lambda r, *a, **k: methods.append(r.request.method))
    again = publish_plan(client, ref, plan, key)
    assert (again.digest, again.uploaded, again.uploaded_bytes) == (first.digest, False, 0)
    assert again.signature_tag == first.signature_tag
    assert not {"POST", "PUT", "PATCH"} & set(methods)


def test_invalid_plan_sends_nothing(registry: RunningRegistry, tmp_path: Path) -> None:
    plan = tmp_path / "bad.hcl"
    plan.write_text('default_target = "missing"\ntarget "a" {\n  kernel = "r.io/k"\n}\n')
    client = RegistryClient()
    methods: list[str] = []
    client.session.hooks["response"].append(lambda r, *a, **k: methods.append(r.request.method))
    with pytest.raises(InvalidPlanError) as info:
        publish_plan(client, parse_ref(f"{registry.address}/me/bad"), plan)
    assert f"{plan}:1:" in str(info.value) and "nothing published" in str(info.value)
    assert methods == []
    tags = requests.get(f"{registry.url}/v2/me/bad/tags/list", timeout=5)
    assert tags.status_code == 404


def test_artifacts_and_index(registry: RunningRegistry, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(os.urandom(200_000))
    initrd.write_bytes(os.urandom(50_000))
    client = RegistryClient(chunk_size=64 * 1024)
    key, public_pem = new_key()
    amd = push_artifact(
        client, parse_ref(f"{registry.address}/kernels/amd:1"), "amd64", kernel, initrd,
        cmdline="console=ttyS0\n", key=key,
    )  # fmt: skip
    arm = push_artifact(client, parse_ref(f"{registry.address}/kernels/arm:1"), "arm64", kernel)
    raw = skopeo_raw(registry, "kernels/amd:1")
    assert [
        (x["mediaType"], x["annotations"]["org.opencontainers.image.title"]) for x in raw["layers"]
    ] == [
        ("application/vnd.cloud-boot.kernel.v1", "vmlinuz"),
        ("application/vnd.cloud-boot.initrd.v1", "initrd"),
        ("application/vnd.cloud-boot.cmdline.v1", "cmdline"),
    ]
    cmdline = requests.get(
        f"{registry.url}/v2/kernels/amd/blobs/{raw['layers'][2]['digest']}", timeout=5
    ).content
    assert cmdline == b"console=ttyS0"
    config = requests.get(
        f"{registry.url}/v2/kernels/amd/blobs/{raw['config']['digest']}", timeout=5
    )
    assert config.content == b'{"architecture":"amd64","created":null,"os":"linux"}'
    cosign_v2_check(registry, "kernels/amd", amd.digest, public_pem)

    index_ref = parse_ref(f"{registry.address}/kernels/multi:1")
    index = push_index(
        client,
        index_ref,
        [
            ("amd64", parse_ref(f"{registry.address}/kernels/amd:1")),
            ("arm64", parse_ref(str(arm.ref))),
        ],
        key=key,
    )
    raw_index = skopeo_raw(registry, "kernels/multi:1")
    assert raw_index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["platform"], m["digest"]) for m in raw_index["manifests"]] == [
        ({"architecture": "amd64", "os": "linux"}, amd.digest),
        ({"architecture": "arm64", "os": "linux"}, arm.digest),
    ]
    cosign_v2_check(registry, "kernels/multi", index.digest, public_pem)
    # the per-arch manifests were copied (blobs mounted) into the index's repository
    run(["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry.address}/kernels/multi@{arm.digest}"])  # fmt: skip
    layer = skopeo_raw(registry, f"kernels/multi@{arm.digest}")["layers"][0]["digest"]
    assert requests.head(f"{registry.url}/v2/kernels/multi/blobs/{layer}", timeout=5).ok


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cloudboot"), "--log-format", "json", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_cli_push_sign_verify(registry: RunningRegistry, tmp_path: Path) -> None:
    plan = tmp_path / "demo.hcl"
    plan.write_text(PLAN)
    env = {"COSIGN_PASSWORD": "correct horse"}
    gen = cli("key", "generate", "-o", str(tmp_path / "cosign.key"), env=env, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    ref = f"{registry.address}/me/cli:latest"
    out = cli("push", "plan", ref, "-f", str(plan), "--key", str(tmp_path / "cosign.key"), env=env)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith(f"{ref}@sha256:") and len(line.split("@")[1]) == 71
    assert "correct horse" not in out.stderr
    js = cli(
        "push",
        "plan",
        ref,
        "-f",
        str(plan),
        "--json",
        "--key",
        str(tmp_path / "cosign.key"),
        env=env,
    )
    data = json.loads(js.stdout)
    assert data["digest"] == line.split("@")[1] and data["uploaded"] is False
    assert set(data) >= {"ref", "digest", "size", "signature_tag", "uploaded"}
    ok = cli("verify", ref, "--key", str(tmp_path / "cosign.pub"))
    assert ok.returncode == 0 and ok.stdout.startswith("Verified OK"), ok.stderr

    other = tmp_path / "other"
    cli("key", "generate", "-o", str(other / "cosign.key"), env=env)
    wrong = cli("verify", ref, "--key", str(other / "cosign.pub"))
    assert wrong.returncode == 3 and "none of 1 signature(s)" in wrong.stderr

    unsigned = cli("push", "plan", f"{registry.address}/me/unsigned", "-f", str(plan))
    assert unsigned.returncode == 0
    missing = cli(
        "verify", f"{registry.address}/me/unsigned", "--key", str(tmp_path / "cosign.pub")
    )
    assert missing.returncode == 3 and "no signature" in missing.stderr

    signed = cli(
        "sign", f"{registry.address}/me/unsigned", "--key", str(tmp_path / "cosign.key"), env=env
    )
    assert signed.returncode == 0, signed.stderr
    assert (
        cli(
            "verify", f"{registry.address}/me/unsigned", "--key", str(tmp_path / "cosign.pub")
        ).returncode
        == 0
    )

    bad = tmp_path / "bad.hcl"
    bad.write_text('target "a" {\n  kernel = local.nope\n}\n')
    failed = cli("push", "plan", f"{registry.address}/me/bad", "-f", str(bad))
    assert failed.returncode == 1 and f"{bad}:2:" in failed.stderr and failed.stdout == ""
