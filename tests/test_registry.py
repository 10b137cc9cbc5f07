"""publisher.registry + publisher.auth against real docker-registry servers.

Covers the plain loopback registry, TLS + htpasswd (credentials from docker config.json, a
credential helper, the environment; the CA bundle option), retries across a registry
restart in the middle of a multi-blob push, and the bounded failure when it stays down.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from guest.contract import cosign
from guest.contract.oci import MEDIA_MANIFEST, Descriptor, Manifest, digest_of, parse_ref
from guest.contract.pubkey import load_public_key
from publisher.auth import Credentials, lookup_credentials
from publisher.blob import ContentChangedError
from publisher.localregistry import RunningRegistry, free_port, local_registry
from publisher.push import publish_plan, push_artifact
from publisher.refsign import verify_ref
from publisher.registry import (
    Blob,
    RegistryClient,
    RegistryError,
    RegistryUnavailableError,
    RetryPolicy,
)
from publisher.signing import generate_key_pair, parse_private_key
from tests.bearer_front import MIXED, PLAIN, bearer_front
from tests.faulty_proxy import watch_tag
from tests.registry_tls import TlsRegistry, tls_registry


@pytest.fixture
def secure_registry(tmp_path: Path) -> Iterator[TlsRegistry]:
    with tls_registry(tmp_path / "tls") as reg:
        yield reg


def recorder(client: RegistryClient) -> list[tuple[str, str, int]]:
    """Record every HTTP exchange the client makes (method, path, status)."""
    seen: list[tuple[str, str, int]] = []

    def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        path = requests.utils.urlparse(resp.request.url).path
        seen.append((str(resp.request.method), path, resp.status_code))

    client.session.hooks["response"].append(hook)
    return seen


def test_blobs_manifests_tags_round_trip(registry: RunningRegistry) -> None:
    client = RegistryClient()
    ref = parse_ref(f"{registry.address}/me/things:v1")
    seen = recorder(client)
    blob = Blob.of_bytes(b"hello blob")
    assert client.push_blob(ref, blob) == len(b"hello blob")
    puts_before = sum(1 for m, _, _ in seen if m in ("POST", "PUT", "PATCH"))
    fresh = RegistryClient()  # no cache: must HEAD and skip the upload
    assert fresh.push_blob(ref, blob) == 0
    assert client.get_blob(ref, blob.digest) == b"hello blob"
    manifest = Manifest(
        Descriptor.for_bytes("a/b", b"hello blob"), (Descriptor.for_bytes("a/b", b"hello blob"),)
    )
    digest = client.put_manifest(ref, bytes(manifest), MEDIA_MANIFEST, "v1")
    for tag in ("v2", "v3"):
        client.put_manifest(ref, bytes(manifest), MEDIA_MANIFEST, tag)
    data, media, got = client.get_manifest(ref)
    assert (data, media, got) == (bytes(manifest), MEDIA_MANIFEST, digest)
    head = client.head_manifest(ref)
    assert head is not None and head.digest == digest
    assert client.head_manifest(ref.with_tag("nope")) is None
    assert sorted(client.list_tags(ref)) == ["v1", "v2", "v3"]
    assert puts_before == 2  # POST + PUT for the one upload


def test_large_blob_is_streamed_in_chunks(registry: RunningRegistry, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    path = tmp_path / "vmlinuz"
    path.write_bytes(payload)
    client = RegistryClient(chunk_size=64 * 1024)
    seen = recorder(client)
    ref = parse_ref(f"{registry.address}/me/kernel")
    blob = Blob.of_file(path)
    assert blob.digest == digest_of(payload) and blob.data is None
    assert client.push_blob(ref, blob) == len(payload)
    assert [m for m, _, _ in seen].count("PATCH") == 5  # ceil(300000 / 65536)
    assert client.get_blob(ref, blob.digest) == payload


@pytest.mark.parametrize("size", [300_000, 1000])  # streamed in chunks; one PUT
def test_a_file_changed_after_hashing_is_not_sent_as_its_digest(
    registry: RunningRegistry, tmp_path: Path, size: int
) -> None:
    """The digest is in a manifest once it is hashed; a file replaced before the upload
    (two pushes filling one cache entry) fails with its path, and the registry holds
    neither the hashed nor the new content."""
    path = tmp_path / "demo.raw.gz"
    path.write_bytes(os.urandom(size))
    blob = Blob.of_file(path)
    replacement = os.urandom(size)
    path.write_bytes(replacement)
    client = RegistryClient(chunk_size=64 * 1024)
    seen = recorder(client)
    ref = parse_ref(f"{registry.address}/me/base")
    with pytest.raises(ContentChangedError) as info:
        client.push_blob(ref, blob)
    assert str(path) in str(info.value) and "changed while it was being pushed" in str(info.value)
    assert not [u for m, u, _ in seen if m == "PUT"]  # the upload was never finished
    assert not client.blob_exists(ref, blob.digest)
    assert not client.blob_exists(ref, digest_of(replacement))
    path.write_bytes(replacement + b"x")  # grown: refused too, without reading on and on
    with pytest.raises(ContentChangedError):
        client.push_blob(ref, Blob(blob.digest, size, path=path))


def test_client_error_fails_at_once_with_registry_message(registry: RunningRegistry) -> None:
    client = RegistryClient(retry=RetryPolicy(total=10))
    seen = recorder(client)
    ref = parse_ref(f"{registry.address}/me/broken:t")
    manifest = Manifest(Descriptor.for_bytes("a/b", b"never uploaded"))
    with pytest.raises(RegistryError) as info:
        client.put_manifest(ref, bytes(manifest), MEDIA_MANIFEST, "t")
    assert info.value.status == 400
    assert "MANIFEST_BLOB_UNKNOWN" in str(info.value) and "me/broken" in str(info.value)
    assert len(seen) == 1  # no retry


def test_tls_and_htpasswd_with_docker_config(secure_registry: TlsRegistry, tmp_path: Path) -> None:
    reg = secure_registry.registry
    ref = parse_ref(f"{reg.address}/me/plan:latest")
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    auth = base64.b64encode(f"{secure_registry.user}:{secure_registry.password}".encode())
    config.write_text(json.dumps({"auths": {f"https://{reg.address}": {"auth": auth.decode()}}}))

    def creds(registry: str) -> Credentials | None:
        return lookup_credentials(registry, config_path=config, env={})

    client = RegistryClient(insecure=False, ca_bundle=secure_registry.ca, credentials=creds)
    assert client.base_url(ref) == f"https://{reg.address}"  # --secure overrides loopback
    blob = Blob.of_bytes(b"secret plan")
    with structlog.testing.capture_logs() as logs:
        assert client.push_blob(ref, blob) == len(b"secret plan")
    assert secure_registry.password not in repr(logs) and auth.decode() not in repr(logs)

    # no credentials: the message names the status, the repository and where to look
    anonymous = RegistryClient(
        insecure=False, ca_bundle=secure_registry.ca, credentials=lambda r: None
    )
    with pytest.raises(RegistryError) as info:
        anonymous.blob_exists(ref, blob.digest)
    assert str(info.value).startswith(
        f"401 unauthorized for {reg.address}/me/plan: no credentials for {reg.address}"
    )
    assert "cloudboot login" in str(info.value) and "REGISTRY_USERNAME" in str(info.value)
    assert secure_registry.password not in str(info.value)

    # without the CA bundle: a clear TLS error at once, not a retry loop
    untrusted = RegistryClient(insecure=False, credentials=creds, retry=RetryPolicy(total=30))
    started = time.monotonic()
    with pytest.raises(RegistryError, match="TLS verification failed"):
        untrusted.blob_exists(ref, blob.digest)
    assert time.monotonic() - started < 10


def test_credentials_from_helper_and_environment(
    secure_registry: TlsRegistry, tmp_path: Path
) -> None:
    reg = secure_registry.registry
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-cbtest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'[ "$server" = "{reg.address}" ] || {{ echo "credentials not found" >&2; exit 1; }}\n'
        f'printf \'{{"ServerURL":"%s","Username":"{secure_registry.user}",'
        f'"Secret":"{secure_registry.password}"}}\' "$server"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "cbtest"}))
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{old_path}"
    try:
        found = lookup_credentials(reg.address, config_path=config, env={})
        assert found is not None and found.username == secure_registry.user
        assert secure_registry.password not in repr(found)
        assert lookup_credentials("other.example:5000", config_path=config, env={}) is None
    finally:
        os.environ["PATH"] = old_path
    env = {"REGISTRY_USERNAME": secure_registry.user, "REGISTRY_PASSWORD": secure_registry.password}
    from_env = lookup_credentials(reg.address, config_path=tmp_path / "absent.json", env=env)
    assert from_env is not None
    client = RegistryClient(
        insecure=False, ca_bundle=secure_registry.ca, credentials=lambda r: from_env
    )
    assert not client.blob_exists(parse_ref(f"{reg.address}/me/x"), digest_of(b"x"))


def test_registry_never_reached_fails_at_once_with_the_cause() -> None:
    """A refused connection to a registry that never answered is a wrong address or a
    registry that is not running: said at once, not after 60 s of retries."""
    client = RegistryClient(retry=RetryPolicy(total=30.0, initial=0.05, maximum=0.5))
    ref = parse_ref(f"127.0.0.1:{free_port()}/me/plan")
    with structlog.testing.capture_logs() as logs, pytest.raises(RegistryError) as info:
        client.push_blob(ref, Blob.of_bytes(b"x"))
    message = str(info.value)
    assert f"cannot reach registry {ref.registry}" in message and "connection refused" in message
    assert not isinstance(info.value, RegistryUnavailableError)
    assert [e for e in logs if e["event"] == "registry retry"] == []


def test_unknown_host_fails_at_once_with_the_cause() -> None:
    client = RegistryClient(retry=RetryPolicy(total=30.0, initial=0.05, maximum=0.5))
    ref = parse_ref("no-such-host.invalid:5000/me/plan")
    with structlog.testing.capture_logs() as logs, pytest.raises(RegistryError) as info:
        client.push_blob(ref, Blob.of_bytes(b"x"))
    assert "unknown host" in str(info.value)
    assert [e for e in logs if e["event"] == "registry retry"] == []


def test_a_blob_whose_head_fails_is_uploaded_again(registry: RunningRegistry) -> None:
    """A registry killed while it links a blob into a repository leaves the link file
    empty; docker-registry then answers that blob's HEAD with 500 until the blob is
    uploaded again (found as a flake of the restart test below). The existence check is
    only a shortcut: a server error there must lead to the upload, which repairs the
    link, not to a minute of retried HEADs."""
    ref = parse_ref(f"{registry.address}/me/relinked:v1")
    blob = Blob.of_bytes(os.urandom(4096))
    RegistryClient().push_blob(ref, blob)
    repo = registry.storage / "docker/registry/v2/repositories/me/relinked"
    link = repo / "_layers/sha256" / blob.digest.removeprefix("sha256:") / "link"
    link.write_text("")  # what the killed registry left behind
    assert requests.head(f"{registry.url}/v2/me/relinked/blobs/{blob.digest}").status_code == 500
    client = RegistryClient(retry=RetryPolicy(total=5, initial=0.1, maximum=0.5))
    seen = recorder(client)
    assert client.push_blob(ref, blob) == blob.size
    assert [m for m, _, _ in seen][:2] == ["HEAD", "POST"]  # one HEAD, then the upload
    assert RegistryClient().get_blob(ref, blob.digest) == blob.data


def test_a_tag_the_registry_cannot_read_is_moved(registry: RunningRegistry, tmp_path: Path) -> None:
    """A registry we do not start (so do not mend) with a tag whose link was left empty:
    looking the tag up answers 500, but publishing only looks to save a PUT, so it moves
    the tag, which rewrites the link."""
    plan = tmp_path / "p.hcl"
    plan.write_text('default_target = "a"\ntarget "a" {\n  kernel = "r.io/k:1"\n}\n')
    key = parse_private_key(generate_key_pair(b"")[0], b"")
    ref = parse_ref(f"{registry.address}/me/broken-tag:latest")
    publish_plan(RegistryClient(), ref, plan, key)
    tags = registry.storage / "docker/registry/v2/repositories/me/broken-tag/_manifests/tags"
    (tags / "latest/current/link").write_text("")
    assert RegistryClient().probe_manifest(ref) is None
    plan.write_text(plan.read_text().replace('"a"', '"b"'))
    client = RegistryClient(retry=RetryPolicy(total=5, initial=0.1, maximum=0.5))
    moved = publish_plan(client, ref, plan, key)
    info = RegistryClient().head_manifest(ref)
    assert info is not None and info.digest == moved.digest


@pytest.mark.parametrize("left_empty", ["tags", "_layers", "revisions", "manifest data"])
def test_a_registry_killed_mid_write_is_repaired_at_start(tmp_path: Path, left_empty: str) -> None:
    """What a killed docker-registry leaves (empty link files, an empty manifest ``data``)
    made it answer 500 for that tag or blob for good: republishing failed after the
    whole retry bound, and so did every guest's fetch. Started again by cloudboot, the
    registry's storage is mended first, and the same publish just works."""
    storage = tmp_path / "storage"
    plan = tmp_path / "p.hcl"
    plan.write_text('default_target = "a"\ntarget "a" {\n  kernel = "r.io/k:1"\n}\n')
    private_pem, public_pem = generate_key_pair(b"")
    key = parse_private_key(private_pem, b"")
    with local_registry(tmp_path / "a", storage=storage) as reg:
        ref = parse_ref(f"{reg.address}/me/plan:latest")
        first = publish_plan(RegistryClient(), ref, plan, key)
    v2 = storage / "docker/registry/v2"
    if left_empty == "manifest data":
        hexdigest = first.digest.removeprefix("sha256:")
        victims = [v2 / "blobs/sha256" / hexdigest[:2] / hexdigest / "data"]
    else:
        victims = [p for p in v2.glob("repositories/**/link") if f"/{left_empty}/" in str(p)]
    assert victims
    for victim in victims:
        victim.write_bytes(b"")
    upload = v2 / "repositories/me/plan/_uploads/0b7e/data"  # an upload just begun: kept
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"")
    with (
        structlog.testing.capture_logs() as logs,
        local_registry(tmp_path / "b", storage=storage) as reg,
    ):
        ref = parse_ref(f"{reg.address}/me/plan:latest")
        client = RegistryClient(retry=RetryPolicy(total=5, initial=0.1, maximum=0.5))
        again = publish_plan(client, ref, plan, key)
        assert again.digest == first.digest
        verified = verify_ref(RegistryClient(), ref, load_public_key(public_pem))
        assert verified.digest == first.digest
    (repair,) = [e for e in logs if e["event"].startswith("registry storage: mended")]
    assert len(repair["files"]) == len(victims)
    assert upload.exists()


def test_registry_restart_mid_push_completes_and_tag_never_dangles(tmp_path: Path) -> None:
    """Stop docker-registry during a multi-blob signed push, restart it on the same port
    and storage: the push completes after retries and no reader ever sees the tag point at
    an unsigned or incomplete manifest."""
    port, storage = free_port(), tmp_path / "storage"
    files = {}
    for name, size in (("vmlinuz", 700_000), ("initrd", 500_000), ("modules", 300_000)):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    private_pem, public_pem = generate_key_pair(b"pw")
    key = parse_private_key(private_pem, b"pw")
    first = contextlib.ExitStack()
    second = contextlib.ExitStack()
    reg = first.enter_context(local_registry(tmp_path / "a", port=port, storage=storage))
    base = reg.url
    ref = parse_ref(f"{reg.address}/me/kernel:stable")
    client = RegistryClient(
        chunk_size=128 * 1024, retry=RetryPolicy(total=60, initial=0.2, maximum=1)
    )
    restarted = threading.Event()
    stopped = threading.Event()

    def restart() -> None:
        time.sleep(1.0)
        second.enter_context(local_registry(tmp_path / "b", port=port, storage=storage))
        restarted.set()

    def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.request.method == "PATCH" and not stopped.is_set():
            stopped.set()
            first.close()  # the registry dies with uploads in flight
            threading.Thread(target=restart, daemon=True).start()

    client.session.hooks["response"].append(hook)
    try:
        with (
            watch_tag(base, "me/kernel", "stable") as watch,
            structlog.testing.capture_logs() as logs,
        ):
            result = push_artifact(
                client,
                ref,
                "amd64",
                files["vmlinuz"],
                files["initrd"],
                files["modules"],
                "console=ttyS0",
                key=key,
            )
        assert stopped.is_set() and restarted.is_set()
        assert any(e["event"] == "registry retry" for e in logs), "the outage was not retried"
        assert watch.violations == []
        assert watch.digests == [result.digest]
        assert result.uploaded and result.signature_tag
        verified = verify_ref(RegistryClient(), ref, cosign.load_public_key(public_pem))
        assert verified.digest == result.digest
        check = RegistryClient()
        manifest = Manifest.from_bytes(check.get_manifest(ref)[0])
        for desc, name in zip(manifest.layers, ("vmlinuz", "initrd", "modules"), strict=False):
            assert check.get_blob(ref, desc.digest) == files[name].read_bytes()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("challenge", [PLAIN, MIXED], ids=["plain", "mixed"])
def test_bearer_token_flow_with_cached_token(
    registry: RunningRegistry, tmp_path: Path, challenge: str
) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text('default_target = "a"\ntarget "a" {\n  kernel = "r.io/k:1"\n}\n')
    key = parse_private_key(generate_key_pair(b"")[0], b"")
    with bearer_front(registry.url, challenge=challenge) as (front, handler):
        ref = parse_ref(f"{front}/me/plan:latest")
        anonymous = RegistryClient(credentials=lambda r: None)
        with pytest.raises(RegistryError, match=f"^401 unauthorized for {front}/me/plan"):
            publish_plan(anonymous, ref, plan)
        creds = Credentials("carol", "pw", "test")
        client = RegistryClient(credentials=lambda r: creds)
        with structlog.testing.capture_logs() as logs:
            first = publish_plan(client, ref, plan, key)
            plan.write_text(plan.read_text().replace("k:1", "k:2"))
            second = publish_plan(client, ref, plan, key)
        assert first.digest != second.digest and second.uploaded
        assert handler.issued == 1  # one token for the whole session, not one per request
        assert "tok-7f3a" not in repr(logs) and "pw" not in repr([e.get("auth") for e in logs])
    verify_ref(
        RegistryClient(), parse_ref(f"{registry.address}/me/plan"), load_public_key(key.public_pem)
    )
    direct = RegistryClient().head_manifest(parse_ref(f"{registry.address}/me/plan:latest"))
    assert direct is not None and direct.digest == second.digest
