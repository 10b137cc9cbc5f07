"""Round trips a repeat publisher saves, and that the beliefs behind them never mislead.

A client that publishes edit after edit to one repository (the watcher) skips the blob and
tag lookups it can answer itself and uploads through sessions opened ahead. These tests
count the exchanges on the wire, and then break each belief from outside (another writer
moves the tag, the registry restarts with its storage wiped) to show the publish still
ends with the tag at a complete, signed manifest.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import requests
import structlog

from guest.contract import cosign
from guest.contract.oci import Manifest, parse_ref
from publisher.localregistry import RunningRegistry, free_port, local_registry
from publisher.push import publish_plan
from publisher.refsign import verify_ref
from publisher.registry import RegistryClient
from publisher.signing import SigningKey, generate_key_pair, parse_private_key
from publisher.sigtag import existing_signatures
from tests.faulty_proxy import watch_tag
from tests.helpers import wait_for

#: Its kernel tag is on a port nothing listens on (1), so the pin lookup is refused at once
#: and sends nothing: a developer's own `up` registry on 5000 must not count here.
PLAN = 'default_target = "a"\ntarget "a" {{\n  kernel = "127.0.0.1:1/k:{n}"\n}}\n'


def new_key() -> tuple[SigningKey, bytes]:
    private_pem, public_pem = generate_key_pair(b"")
    return parse_private_key(private_pem, b""), public_pem


def recorder(client: RegistryClient) -> list[tuple[str, str, int]]:
    seen: list[tuple[str, str, int]] = []

    def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        path = requests.utils.urlparse(resp.request.url).path
        seen.append((str(resp.request.method), path, resp.status_code))

    client.session.hooks["response"].append(hook)
    return seen


def upload_sessions(registry: RunningRegistry, repo: str) -> list[Path]:
    """Open upload sessions as docker-registry keeps them on disk (a cancelled one loses
    its ``startedat`` and ``data`` files; its directory stays)."""
    uploads = registry.storage / "docker/registry/v2/repositories" / repo / "_uploads"
    found = uploads.iterdir() if uploads.is_dir() else iter(())
    return sorted(d for d in found if (d / "startedat").is_file())


def test_repeat_publish_sends_only_what_changed(registry: RunningRegistry, tmp_path: Path) -> None:
    plan = tmp_path / "plan.hcl"
    key, public_pem = new_key()
    ref = parse_ref(f"{registry.address}/me/plan:latest")
    client = RegistryClient()
    seen = recorder(client)
    for n in range(2):
        plan.write_text(PLAN.format(n=n))
        publish_plan(client, ref, plan, key)
    wait_for(lambda: client.ready_uploads(ref) == 3)  # plan, payload, signature config
    assert len(upload_sessions(registry, "me/plan")) == 3

    seen.clear()
    plan.write_text(PLAN.format(n="edit"))
    result = publish_plan(client, ref, plan, key)
    tag_put = seen.index(("PUT", "/v2/me/plan/manifests/latest", 201))
    critical = [(m, p.rsplit("/", 2)[-2]) for m, p, _ in seen[: tag_put + 1]]
    # No HEAD (blobs known or new, tag known to be elsewhere), no POST (sessions ready):
    # the signature lookup, three blob PUTs, then manifest, signature and tag in order.
    assert sorted(critical[:4]) == [("GET", "manifests")] + [("PUT", "uploads")] * 3
    assert [m for m, _ in critical[4:]] == ["PUT"] * 3
    assert seen[tag_put - 2][1].endswith(result.digest)
    assert seen[tag_put - 1][1].endswith(cosign.signature_tag(result.digest))
    verify_ref(RegistryClient(), ref, cosign.load_public_key(public_pem))

    wait_for(lambda: client.ready_uploads(ref) == 3)
    seen.clear()
    again = publish_plan(client, ref, plan, key)  # unchanged: checked, nothing written
    assert (again.digest, again.uploaded, again.uploaded_bytes) == (result.digest, False, 0)
    assert [m for m, _, _ in seen if m not in ("GET", "HEAD")] == []
    assert ("HEAD", "/v2/me/plan/manifests/latest", 200) in seen  # the tag is still asked

    client.close()  # sessions opened ahead and never used are cancelled
    assert upload_sessions(registry, "me/plan") == []


def test_tag_moved_by_another_writer_is_put_back(registry: RunningRegistry, tmp_path: Path) -> None:
    """The client remembers where it put the tag, but re-publishing that same content
    still asks the registry: another writer may have moved the tag since. Moving the
    tag back is a new publication: it is signed again with a fresher version than the
    other writer's, so a guest's rollback floor does not refuse it (docs/trust-model.md)."""
    plan_a, plan_b = tmp_path / "a.hcl", tmp_path / "b.hcl"
    plan_a.write_text(PLAN.format(n="a"))
    plan_b.write_text(PLAN.format(n="b"))
    key, _ = new_key()
    ref = parse_ref(f"{registry.address}/me/plan:latest")
    mine, other = RegistryClient(), RegistryClient()
    first = publish_plan(mine, ref, plan_a, key)
    moved = publish_plan(other, ref, plan_b, key)
    again = publish_plan(mine, ref, plan_a, key)
    assert again.digest == first.digest != moved.digest
    assert again.uploaded  # the tag moved back, under a new signature
    public = cosign.load_public_key(key.public_pem)
    versions = [
        cosign.check_signatures(public, d, existing_signatures(RegistryClient(), ref, d)[1]).version
        for d in (moved.digest, again.digest)
    ]
    assert versions[0] is not None and versions[1] is not None and versions[1] > versions[0]
    head = RegistryClient().head_manifest(ref)
    assert head is not None and head.digest == first.digest
    unchanged = publish_plan(mine, ref, plan_a, key)
    assert not unchanged.uploaded


def test_registry_wiped_under_a_warm_client(tmp_path: Path) -> None:
    """docker-registry restarts on the same port with empty storage: the client's cached
    blobs, tag position and open upload sessions are all wrong; the publish notices
    (MANIFEST_BLOB_UNKNOWN, refused sessions), starts over and ends signed and complete."""
    port = free_port()
    plan = tmp_path / "plan.hcl"
    key, public_pem = new_key()
    client = RegistryClient()
    with local_registry(tmp_path / "one", port=port) as reg:
        ref = parse_ref(f"{reg.address}/me/plan:latest")
        for n in range(2):
            plan.write_text(PLAN.format(n=n))
            publish_plan(client, ref, plan, key)
        wait_for(lambda: client.ready_uploads(ref) == 3)
    with (
        local_registry(tmp_path / "two", port=port) as reg,
        watch_tag(reg.url, "me/plan", "latest") as watch,
    ):
        plan.write_text(PLAN.format(n="after-wipe"))
        with structlog.testing.capture_logs() as logs:
            result = publish_plan(client, ref, plan, key)
        events = [e["event"] for e in logs]
        assert "registry lost blobs this client had seen; publishing again" in events
        assert events.count("spare upload session refused") == 3
        verify_ref(RegistryClient(), ref, cosign.load_public_key(public_pem))
        with contextlib.closing(RegistryClient()) as fresh:
            data, _, digest = fresh.get_manifest(ref)
            plan_layer = Manifest.from_bytes(data).layers[0]
            assert digest == result.digest
            assert fresh.get_blob(ref, plan_layer.digest) == plan.read_bytes()
    assert watch.violations == [] and watch.digests == [result.digest]
