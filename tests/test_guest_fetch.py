"""The guest's OCI pulls against a real docker-registry: anonymous, Basic, bearer; index
resolution; digest checks; cosign verification; subplan-free plan and artifact pulls.

Artifacts are pushed with raw distribution-spec HTTP here, so the guest client is checked
against the registry, not against our own publisher. Signatures are made with
``cryptography`` (tests only) and checked by the guest's pure-Python verifier.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest.agent.fetch import Credentials, FetchError, RegistryClient
from guest.agent.pulls import join_initrd, pull_boot, pull_plan, verify_signature
from guest.contract import cosign, oci
from guest.contract.errors import FormatError
from publisher.localregistry import RegistryTls, RunningRegistry, local_registry
from publisher.run import run
from tests.bearer_front import MIXED, PLAIN, bearer_front
from tests.helpers import new_key, push_blob, push_manifest, push_plan, sign

PLAN = b'default_target = "t"\ntarget "t" {\n  disk { device = "LABEL=root" }\n}\n'


# ---- raw-HTTP pushing (the test's own, independent of publisher/) -----------------------


# ---- tests -------------------------------------------------------------------------------


def test_anonymous_plan_pull_and_signature(registry: RunningRegistry) -> None:
    base = registry.url
    digest = push_plan(base, "plans/web", "prod", PLAN)
    key, pem = new_key()
    sign(base, "plans/web", f"{registry.address}/plans/web", digest, key)
    ref = oci.parse_ref(f"oci://{registry.address}/plans/web:prod")
    client = RegistryClient()
    resolved, plan = pull_plan(client, ref, "amd64")
    assert plan == PLAN and resolved.top_digest == digest
    signed = verify_signature(client, ref, resolved.top_digest, cosign.load_public_key(pem))
    assert signed.manifest_digest == digest
    # another key: the FATAL line must be able to say the signature does not verify
    _other, other_pem = new_key()
    with pytest.raises(cosign.BadSignatureError, match="verifies"):
        verify_signature(client, ref, digest, cosign.load_public_key(other_pem))


def test_unsigned_and_tampered_plans_are_refused(registry: RunningRegistry) -> None:
    base = registry.url
    key, pem = new_key()
    public = cosign.load_public_key(pem)
    client = RegistryClient()
    unsigned = push_plan(base, "plans/a", "latest", PLAN)
    ref = oci.parse_ref(f"{registry.address}/plans/a")
    with pytest.raises(cosign.NoSignatureError, match="not signed"):
        verify_signature(client, ref, unsigned, public)
    # signed, then the tag moved to different content: the old signature names the old digest
    signed = push_plan(base, "plans/b", "latest", PLAN)
    sign(base, "plans/b", f"{registry.address}/plans/b", signed, key)
    tampered = push_plan(base, "plans/b", "latest", PLAN + b"# evil\n")
    sign(
        base,
        "plans/b",
        f"{registry.address}/plans/b",
        tampered,
        key,
        payload=cosign.payload(f"{registry.address}/plans/b", signed),
    )
    ref_b = oci.parse_ref(f"{registry.address}/plans/b")
    resolved, _plan = pull_plan(client, ref_b, "amd64")
    with pytest.raises(cosign.DigestMismatchError):
        verify_signature(client, ref_b, resolved.top_digest, public)


def test_index_resolution_and_artifact_layers(registry: RunningRegistry) -> None:
    base = registry.url
    entries = []
    for arch, kernel in (("arm64", b"ARM" * 1000), ("amd64", b"MZ" + bytes(300_000))):
        layers = {
            oci.LayerRole.KERNEL: push_blob(base, "k/debian", kernel),
            oci.LayerRole.INITRD: push_blob(base, "k/debian", b"initrd-" + arch.encode()),
            oci.LayerRole.MODULES: push_blob(base, "k/debian", b"modules-" + arch.encode()),
            oci.LayerRole.CMDLINE: push_blob(base, "k/debian", b"console=ttyS0 quiet"),
        }
        manifest, config = oci.artifact_manifest(arch, layers)
        push_blob(base, "k/debian", config)
        digest = push_manifest(base, "k/debian", arch, bytes(manifest), oci.MEDIA_MANIFEST)
        entries.append(
            oci.Descriptor(
                oci.MEDIA_MANIFEST, digest, len(bytes(manifest)), platform=oci.Platform(arch)
            )
        )
    index = oci.Index(tuple(entries))
    push_manifest(base, "k/debian", "6.1", bytes(index), oci.MEDIA_INDEX)
    client = RegistryClient()
    ref = oci.parse_ref(f"{registry.address}/k/debian:6.1")
    boot = pull_boot(client, [ref], "amd64")
    assert boot.kernel == b"MZ" + bytes(300_000)
    assert boot.initrd == join_initrd(b"initrd-amd64", b"modules-amd64")
    assert join_initrd(b"12345", b"cpio") == b"12345\0\0\0cpio"  # 4-byte aligned members
    assert boot.cmdline == "console=ttyS0 quiet"
    with pytest.raises(oci.NoMatchingPlatformError, match="riscv64"):
        pull_boot(client, [ref], "riscv64")


def test_corrupted_blob_is_refused(registry: RunningRegistry) -> None:
    """The registry serves what it stores: overwrite the stored blob and the pull fails."""
    base = registry.url
    push_plan(base, "plans/c", "latest", PLAN)
    blob = next(p for p in registry.storage.rglob("data") if p.read_bytes() == PLAN)
    blob.write_bytes(PLAN.replace(b"root", b"evil"))
    with pytest.raises(oci.DigestMismatchError, match="does not match"):
        pull_plan(RegistryClient(), oci.parse_ref(f"{registry.address}/plans/c"), "amd64")


def test_missing_ref_names_it(registry: RunningRegistry) -> None:
    with pytest.raises(FetchError, match=r"404.*plans/none"):
        pull_plan(RegistryClient(), oci.parse_ref(f"{registry.address}/plans/none"), "amd64")


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[tuple[RunningRegistry, ssl.SSLContext]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ]
    )
    htpasswd = tmp_path / "htpasswd"
    run(["htpasswd", "-Bbc", htpasswd, "alice", "s3cret-pass"])
    with local_registry(tmp_path / "reg", tls=RegistryTls(cert, key), htpasswd=htpasswd) as reg:
        yield reg, ssl.create_default_context(cafile=str(cert))


def test_basic_auth_over_tls(basic_registry: tuple[RunningRegistry, ssl.SSLContext]) -> None:
    reg, context = basic_registry
    base = f"https://{reg.address}"
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret-pass").decode()}
    push_plan(base, "plans/private", "latest", PLAN, headers=auth, context=context)
    ref = oci.parse_ref(f"{reg.address}/plans/private")
    # 127.0.0.1 defaults to plain HTTP; this registry speaks TLS only
    anonymous = RegistryClient(ssl_context=context, force_tls=True)
    with pytest.raises(FetchError, match="Basic credentials"):
        pull_plan(anonymous, ref, "amd64")
    wrong = RegistryClient(
        credentials={reg.address: Credentials("alice", "nope")}, ssl_context=context, force_tls=True
    )
    with pytest.raises(FetchError) as err:
        pull_plan(wrong, ref, "amd64")
    assert "nope" not in str(err.value)
    good = RegistryClient(
        credentials={reg.address: Credentials("alice", "s3cret-pass")},
        ssl_context=context,
        force_tls=True,
    )
    assert pull_plan(good, ref, "amd64")[1] == PLAN
    assert "s3cret" not in repr(good.credentials)


@pytest.mark.parametrize("challenge", [PLAIN, MIXED], ids=["plain", "mixed"])
def test_bearer_token_flow(registry: RunningRegistry, challenge: str) -> None:
    push_plan(registry.url, "plans/web", "latest", PLAN)
    settings = {"challenge": challenge, "user": "bob:pw", "token_field": "access_token"}
    with bearer_front(registry.url, **settings) as (front, _handler):
        ref = oci.parse_ref(f"{front}/plans/web")
        with pytest.raises(FetchError, match="token server answered HTTP 401"):
            pull_plan(RegistryClient(), ref, "amd64")
        client = RegistryClient(credentials={front: Credentials("bob", "pw")})
        assert pull_plan(client, ref, "amd64")[1] == PLAN


def test_skopeo_reads_what_this_test_pushes(registry: RunningRegistry) -> None:
    """The raw pusher above is checked by an independent client too."""
    digest = push_plan(registry.url, "plans/x", "v1", PLAN)
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--raw",
            f"docker://{registry.address}/plans/x:v1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert oci.digest_of(out) == digest


def test_announced_blob_sizes_are_bounded_before_any_byte_is_read(
    registry: RunningRegistry,
) -> None:
    """A manifest fetched by tag is a claim: its kernel layer says 600 MiB (over the guest's
    cap), its bytes are 1 MiB. Refused before the blob is requested: not one byte reaches
    the sink (the old client read until the announced size or the end, into memory)."""
    base = registry.url
    real = push_blob(base, "k/liar", bytes(1 << 20))
    kernel = oci.Descriptor(real.media_type, real.digest, 600 << 20)
    manifest, config = oci.artifact_manifest("amd64", {oci.LayerRole.KERNEL: kernel})
    push_blob(base, "k/liar", config)
    push_manifest(base, "k/liar", "1", bytes(manifest), oci.MEDIA_MANIFEST)
    seen: list[int] = []
    ref = oci.parse_ref(f"{registry.address}/k/liar:1")
    with pytest.raises(FetchError, match=r"announces 629145600 bytes, more than 536870912"):
        pull_boot(RegistryClient(), [ref], "amd64", sink=lambda b: seen.append(len(b)))
    assert seen == []


def test_layer_count_is_bounded() -> None:
    layer = oci.Descriptor("application/octet-stream", oci.digest_of(b""), 0).to_json()
    doc = {"schemaVersion": 2, "mediaType": oci.MEDIA_MANIFEST, "layers": [layer] * 65,
           "config": layer}  # fmt: skip
    with pytest.raises(FormatError, match="65 layers, more than 64"):
        oci.Manifest.from_bytes(json.dumps(doc).encode(), what="sig manifest")
