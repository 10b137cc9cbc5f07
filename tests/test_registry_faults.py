"""Retries against injected registry faults (tests/faulty_proxy.py in front of docker-registry).

Each retryable answer (503, 500, 429 with Retry-After, 408, a dropped connection before or
after the registry acted) is injected at every step of a signed multi-blob push: the push
completes, each retry is logged with the status, and a reader polling the registry
directly never sees the tag at an unsigned or incomplete manifest. Other 4xx fail at once
naming ref and status; a registry that keeps answering 503 fails within the bound.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from guest.contract import cosign
from guest.contract.oci import Manifest, parse_ref
from publisher.localregistry import RunningRegistry
from publisher.push import PushResult, push_artifact
from publisher.refsign import verify_ref
from publisher.registry import (
    SHORTCUT_FAILED,
    RegistryClient,
    RegistryError,
    RegistryUnavailableError,
    RetryPolicy,
)
from publisher.retry import parse_retry_after
from publisher.signing import SigningKey, generate_key_pair, parse_private_key
from tests.faulty_proxy import DROP, DROP_AFTER, Answer, FaultyProxy, faulty_proxy, watch_tag
from tests.helpers import wait_for

REPO, TAG = "me/kernel", "stable"
FAST = RetryPolicy(total=20, initial=0.05, maximum=0.3)

# Every step of a signed push, in the order publish() takes them.
STEPS = {
    "blob HEAD": ("HEAD", r"/blobs/sha256:"),
    "upload start": ("POST", r"/blobs/uploads/$"),
    "upload finish": ("PUT", r"/blobs/uploads/.*digest="),
    "manifest by digest": ("PUT", r"/manifests/sha256:"),
    "signature": ("PUT", r"/manifests/sha256-[0-9a-f]{64}\.sig$"),
    "tag": ("PUT", rf"/manifests/{TAG}$"),
}


@dataclass(frozen=True)
class Setup:
    registry: RunningRegistry
    proxy: FaultyProxy
    key: SigningKey
    public_pem: bytes
    files: dict[str, Path]


@pytest.fixture
def setup(registry: RunningRegistry, tmp_path: Path) -> Iterator[Setup]:
    private_pem, public_pem = generate_key_pair(b"")
    files = {}
    for name, size in (("vmlinuz", 40_000), ("initrd", 30_000), ("modules", 20_000)):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * (size // len(name)))
    with faulty_proxy(registry) as proxy:
        yield Setup(registry, proxy, parse_private_key(private_pem, b""), public_pem, files)


def push(s: Setup, client: RegistryClient) -> PushResult:
    ref = parse_ref(f"{s.proxy.address}/{REPO}:{TAG}")
    f = s.files
    return push_artifact(
        client, ref, "amd64", f["vmlinuz"], f["initrd"], f["modules"], "quiet", key=s.key
    )


def retries(logs: list[dict[str, Any]], registry: str) -> list[dict[str, Any]]:
    """This test's retries: the log capture is process-wide, and an upload thread an
    earlier test left behind may still be retrying against that test's (gone) registry."""
    return [e for e in logs if e["event"] == "registry retry" and e.get("registry") == registry]


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [(503, None), (500, None), (429, "1"), (408, None), (DROP, None), (DROP_AFTER, None)],
    ids=["503", "500", "429-retry-after", "408", "drop", "drop-after"],
)
def test_retryable_fault_at_every_step_is_retried(
    setup: Setup, answer: Answer, retry_after: str | None
) -> None:
    rules = {
        step: setup.proxy.fail(method, path, answer, retry_after=retry_after)
        for step, (method, path) in STEPS.items()
    }
    client = RegistryClient(retry=FAST)
    started = time.monotonic()
    with (
        watch_tag(setup.registry.url, REPO, TAG) as watch,
        structlog.testing.capture_logs() as logs,
    ):
        result = push(setup, client)
    elapsed = time.monotonic() - started

    assert {step: rule.hits for step, rule in rules.items()} == dict.fromkeys(STEPS, 1)
    seen = retries(logs, setup.proxy.address)
    # A 500 on the blob HEAD, which only saves an upload, is not retried: the blob is
    # uploaded (a registry killed mid-write answers 500 there for good: wire-formats §8.6)
    looked = [e for e in logs if e["event"] == SHORTCUT_FAILED and e["look"] == "blob HEAD"]
    assert len(looked) == (answer == 500)
    assert len(seen) >= len(STEPS) - len(looked)
    status = answer if isinstance(answer, int) else 0
    reason = str(answer) if isinstance(answer, int) else "connection"  # failed or reset
    assert all(e["status"] == status and e["reason"].startswith(reason) for e in seen), seen
    if isinstance(answer, int):  # the message names the ref and the status
        assert all(f"{setup.proxy.address}/{REPO}" in e["reason"] for e in seen)
    if retry_after:  # never sooner than the registry asked
        assert all(e["retry_after"] == 1.0 and e["sleep"] >= 1.0 for e in seen)
        assert elapsed >= 1.0
    assert watch.violations == []
    assert watch.digests == [result.digest]  # the tag moved once, straight to the result
    verify_ref(
        RegistryClient(),
        parse_ref(f"{setup.registry.address}/{REPO}:{TAG}"),
        cosign.load_public_key(setup.public_pem),
    )


@pytest.mark.parametrize("status", [400, 403, 404])
@pytest.mark.parametrize("step", ["upload start", "manifest by digest", "tag"])
def test_client_error_fails_at_once_naming_ref_and_status(
    setup: Setup, status: int, step: str
) -> None:
    method, path = STEPS[step]
    setup.proxy.fail(method, path, status, times=-1)
    client = RegistryClient(retry=FAST)
    started = time.monotonic()
    with (
        watch_tag(setup.registry.url, REPO, TAG) as watch,
        structlog.testing.capture_logs() as logs,
        pytest.raises(RegistryError) as info,
    ):
        push(setup, client)
    elapsed = time.monotonic() - started

    assert not isinstance(info.value, RegistryUnavailableError)
    assert info.value.status == status
    message = str(info.value)
    assert message.startswith(f"{status} ") and f"{setup.proxy.address}/{REPO}" in message
    assert retries(logs, setup.proxy.address) == []
    assert len(setup.proxy.seen(method, path)) >= 1
    if step != "upload start":  # one refused PUT, never repeated
        assert len(setup.proxy.seen(method, path)) == 1
    assert elapsed < FAST.total / 2
    assert watch.digests == [] and watch.violations == []


def test_registry_that_keeps_answering_503_fails_within_the_bound(setup: Setup) -> None:
    setup.proxy.fail("*", r".", 503, times=-1)
    bound = RetryPolicy(total=2.0, initial=0.05, maximum=0.5)
    client = RegistryClient(retry=bound)
    started = time.monotonic()
    with (
        watch_tag(setup.registry.url, REPO, TAG) as watch,
        structlog.testing.capture_logs() as logs,
        pytest.raises(RegistryUnavailableError) as info,
    ):
        push(setup, client)
    elapsed = time.monotonic() - started

    assert elapsed < bound.total + 3.0  # the bound, plus the last attempt on a loaded machine
    message = str(info.value)
    assert f"registry {setup.proxy.address} unavailable" in message
    assert f"503 Service Unavailable for {setup.proxy.address}/{REPO}" in message
    assert info.value.status == 503
    assert len(retries(logs, setup.proxy.address)) >= 2
    assert watch.digests == [] and watch.violations == []


def test_retry_after_beyond_the_bound_ends_retries_at_once(setup: Setup) -> None:
    setup.proxy.fail("*", r".", 429, times=-1, retry_after="30")
    client = RegistryClient(retry=RetryPolicy(total=5.0, initial=0.05, maximum=0.5))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as info:
        push(setup, client)
    assert time.monotonic() - started < 3.0  # did not sleep 30 s, nor ran down the 5 s bound
    assert "asked to retry after 30s, beyond the bound" in str(info.value)
    assert info.value.status == 429


def test_fault_cleared_then_unchanged_republish_sends_nothing(setup: Setup) -> None:
    """After a faulty push completes, a fresh client's re-publish sends no blob and no PUT."""
    setup.proxy.fail("PUT", STEPS["tag"][1], 503, times=2)
    first = push(setup, RegistryClient(retry=FAST))
    before = len(setup.proxy.exchanges)
    again = push(setup, RegistryClient(retry=FAST))
    writes = [e for e in setup.proxy.exchanges[before:] if e.method in ("POST", "PUT", "PATCH")]
    assert (again.digest, again.uploaded, again.uploaded_bytes) == (first.digest, False, 0)
    assert writes == []


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


def test_warm_client_survives_faults_on_its_shortcuts(setup: Setup) -> None:
    """A repeat publisher skips HEADs and uses upload sessions opened ahead; faults on
    exactly those requests are retried the slow, careful way and the push completes."""
    client = RegistryClient(retry=FAST)
    ref = parse_ref(f"{setup.proxy.address}/{REPO}:{TAG}")
    for n in range(2):
        setup.files["vmlinuz"].write_bytes(b"kernel %d" % n * 1000)
        push(setup, client)
    # kernel (the one changed blob) + sig payload, config
    wait_for(lambda: client.ready_uploads(ref) >= 3, what="upload sessions opened ahead")
    setup.proxy.fail("PUT", STEPS["upload finish"][1], DROP_AFTER, times=2)
    setup.proxy.fail("PUT", STEPS["tag"][1], 503, times=1)
    setup.files["vmlinuz"].write_bytes(b"kernel edited" * 1000)
    before = len(setup.proxy.exchanges)
    with (
        watch_tag(setup.registry.url, REPO, TAG) as watch,
        structlog.testing.capture_logs() as logs,
    ):
        result = push(setup, client)
    assert len(retries(logs, setup.proxy.address)) >= 3
    during = setup.proxy.exchanges[before:]
    tag_put = max(i for i, e in enumerate(during) if e.method == "PUT" and e.path.endswith(TAG))
    # the shortcuts were taken (no POST: sessions opened ahead), and the dropped PUTs
    # were followed by a HEAD that found the blob there, not by a second upload
    assert [e.method for e in during[:tag_put]].count("POST") == 0
    assert sum(1 for e in during[:tag_put] if e.method == "HEAD" and "/blobs/" in e.path) >= 2
    assert watch.violations == [] and watch.digests[-1] == result.digest
    verify_ref(
        RegistryClient(),
        parse_ref(f"{setup.registry.address}/{REPO}:{TAG}"),
        cosign.load_public_key(setup.public_pem),
    )
    got = RegistryClient().get_blob(ref, result_layer_digest(ref, result.digest))
    assert got == setup.files["vmlinuz"].read_bytes()


def result_layer_digest(ref: Any, digest: str) -> str:
    """The kernel layer's digest in the manifest ``digest`` (read straight back)."""
    data, _, _ = RegistryClient().get_manifest(ref.with_digest(digest))
    return Manifest.from_bytes(data).layers[0].digest
