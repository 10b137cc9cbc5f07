"""An OCI distribution client for publishing: blobs, manifests, tags, with retries and auth.

Written on ``requests`` rather than on oras-py's provider because each of the things
oras-py does its own way hurt here (docs/wire-formats.md §8.5): it prints to stdout, sleeps up to
~2 minutes in its retry decorator, reads whole files into memory, and re-serialises
manifests. This client keeps one ``requests.Session`` (pooled connections, cached bearer
tokens) so the watcher can publish in-process per edit in a few milliseconds.

Every operation (upload one blob, put one manifest ...) is retried as a unit with
exponential backoff and jitter on connection errors, 5xx, 408 and 429, within a bounded
total time; other 4xx fail at once with a message that names the registry and repository.

Round trips are the cost of a publish on loopback, so a client that publishes to one
repository again and again saves the ones it can: blobs it has seen need no HEAD, small
new blobs go up without one, the tag lookup is skipped when the tag must move anyway
(``StoreMemory``), and upload sessions are opened ahead (``OpenUploads``). Each belief is
checked by the registry itself (a manifest PUT refuses missing blobs, a stale session is
refused), and ``publisher.push`` starts over without beliefs when one was wrong.

The transport under it (session, auth, proxies, the retry of one operation) is
``publisher.regsession``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
import structlog

from guest.contract.oci import MANIFEST_ACCEPT, Ref, digest_of, media_type_of, verify_digest
from publisher.blob import Blob, OpenUploads, StoreMemory, open_upload, send_blob
from publisher.config import RegistrySection
from publisher.distspec import require_digest, require_not_html
from publisher.regsession import RegistrySession
from publisher.retry import (
    RegistryError,
    RegistryUnavailableError,
    RetryPolicy,
    TransientRegistryError,
)

__all__ = [
    "Blob",
    "ManifestInfo",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailableError",
    "RetryPolicy",
    "TransientRegistryError",
    "client_from_config",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: The log event of ``shortcut`` when it does the work.
SHORTCUT_FAILED = "the registry answered 500 to a look that only saves work; doing the work"


#: Blobs above this size are sent in PATCH chunks read from disk, never held in memory.
CHUNK_SIZE = 8 * 1024 * 1024

#: Blobs up to this size skip the HEAD before their upload when this client already writes
#: to the repository and has not met the blob there: a watcher publishing edit after edit
#: finds such blobs (the new plan, its signature payload) missing nearly every time, so
#: the HEAD would only add a round trip; a stray re-send costs at most this many bytes.
#: A fresh client, a big blob, or a retry after a failed attempt always asks first.
BLIND_UPLOAD_MAX = 64 * 1024


def shortcut(operation: Callable[[], T], otherwise: T, what: str, ref: Ref) -> T:
    """``operation``, a look that only saves work, or ``otherwise`` when the registry
    answers it with 500 Internal Server Error.

    A registry can fail such a look for good: docker-registry killed while it writes a
    link file leaves it empty and answers 500 for that blob or tag until the link is
    written again (docs/wire-formats.md §8.6). Doing the work (an upload, a tag PUT)
    writes it again; retrying the look would only wait out the whole retry bound. The
    answers that mean "later" (502, 503, 504, 429) and connection errors still raise, to
    be retried: a big upload is not worth sending to a registry that is only busy.
    """
    try:
        return operation()
    except TransientRegistryError as exc:
        if exc.status != 500:
            raise
        log.info(SHORTCUT_FAILED, look=what, ref=str(ref), status=exc.status)
        return otherwise


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass
class RegistryClient(RegistrySession):
    """A reusable client; one instance per process is enough for any number of registries."""

    chunk_size: int = CHUNK_SIZE
    uploaded_bytes: int = 0  # running total of blob bytes sent, for reports and bench
    #: Upload sessions kept open per repository for the next publish (0: never).
    spare_uploads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        self.memory = StoreMemory()
        self._uploads = OpenUploads()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for independent requests (blob uploads, lookups) within one publish."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=6, thread_name_prefix="cloudboot-registry"
                )
            return self._pool

    def close(self) -> None:
        """Stop the threads and cancel upload sessions opened ahead and never used."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._uploads.cancel_all(self.request)
        self.session.close()

    def prepare_uploads(self, ref: Ref, count: int) -> None:
        """Open up to ``count`` upload sessions in the background for the next publish.

        Taken by ``push_blob`` instead of a POST of its own; a session the registry no
        longer knows (restart, purge) is answered 400/404 and replaced by a fresh one.
        """
        missing = min(count, self.spare_uploads) - self._uploads.count(ref)
        for _ in range(max(missing, 0)):
            self.pool().submit(self._uploads.open_one, self.request, ref)

    def ready_uploads(self, ref: Ref) -> int:
        """Upload sessions open and unused in ``ref``'s repository."""
        return self._uploads.count(ref)

    def forget_blobs(self, ref: Ref | None = None) -> None:
        """Drop what this client believes is stored (all of it, or one repository's)."""
        self.memory.forget(ref)

    def _has_blob(self, ref: Ref, digest: str) -> bool:
        """HEAD a blob (one exchange, no retry), answering from the cache when we can."""
        if self.memory.has_blob(ref, digest):
            return True
        resp = self.request(
            "HEAD",
            ref,
            f"/v2/{ref.repository}/blobs/{digest}",
            what="blob HEAD",
            ok=(200,),
            missing_ok=True,
        )
        if resp.status_code == 200:
            require_not_html(resp, ref.name, "blob HEAD")
            self.memory.add_blob(ref, digest)
        return resp.status_code == 200

    def _known_to_have(self, ref: Ref, digest: str) -> bool:
        """``_has_blob`` for the check before an upload: a 500 answer means "no", so the
        upload goes ahead and rewrites what the registry cannot read (see ``shortcut``)."""
        return shortcut(lambda: self._has_blob(ref, digest), False, "blob HEAD", ref)

    # --- blobs ----------------------------------------------------------------------------

    def blob_exists(self, ref: Ref, digest: str) -> bool:
        return self.retrying("blob HEAD", ref, lambda: self._has_blob(ref, digest))

    def mount_blob(self, ref: Ref, digest: str, from_repository: str) -> bool:
        """Cross-repository mount (same registry): True when the blob is now in ``ref``'s repo."""

        def mount() -> bool:
            if self._known_to_have(ref, digest):
                return True
            resp = self.request(
                "POST",
                ref,
                f"/v2/{ref.repository}/blobs/uploads/",
                what="blob mount",
                params={"mount": digest, "from": from_repository},
            )
            if resp.status_code == 201:
                self.memory.add_blob(ref, digest, written=True)
            return resp.status_code == 201

        return self.retrying("blob mount", ref, mount)

    def _worth_asking(self, ref: Ref, blob: Blob, first_attempt: bool) -> bool:
        """Whether to HEAD ``blob`` before uploading it (see ``BLIND_UPLOAD_MAX``)."""
        writing = self.memory.writes_to(ref)
        return not (first_attempt and writing and blob.size <= BLIND_UPLOAD_MAX)

    def push_blob(self, ref: Ref, blob: Blob) -> int:
        """Upload ``blob`` unless the registry has it (HEAD first); returns bytes sent."""
        attempts = 0

        def upload() -> int:
            nonlocal attempts
            attempts += 1
            if self.memory.has_blob(ref, blob.digest):
                return 0
            if self._worth_asking(ref, blob, attempts == 1) and self._known_to_have(
                ref, blob.digest
            ):
                return 0
            sent = None
            spare = self._uploads.take(ref) if attempts == 1 else None
            if spare is not None:
                try:
                    sent = send_blob(self.request, ref, spare, blob, self.chunk_size)
                except RegistryError as exc:
                    if isinstance(exc, TransientRegistryError) or exc.status not in (400, 404):
                        raise
                    log.debug("spare upload session refused", ref=ref.name, status=exc.status)
            if sent is None:
                location = open_upload(self.request, ref)
                sent = send_blob(self.request, ref, location, blob, self.chunk_size)
            with self._lock:
                self.uploaded_bytes += sent
            self.memory.add_blob(ref, blob.digest, written=True)
            log.debug("blob uploaded", ref=ref.name, digest=blob.digest, bytes=sent)
            return sent

        return self.retrying(f"upload of blob {blob.digest[:19]}", ref, upload)

    def get_blob(self, ref: Ref, digest: str) -> bytes:
        def get() -> bytes:
            resp = self.request("GET", ref, f"/v2/{ref.repository}/blobs/{digest}", what="blob")
            return resp.content

        data = self.retrying("blob GET", ref, get)
        verify_digest(data, digest, what=f"{ref.name}@{digest}")
        return data

    # --- manifests and tags ---------------------------------------------------------------

    def _head_manifest(self, ref: Ref) -> ManifestInfo | None:
        """HEAD a manifest (one exchange, no retry), remembering the answer; None when it
        does not exist."""
        info = self._ask_manifest(ref)
        self.memory.saw(ref, ref.reference, info.digest if info else None)
        return info

    def _ask_manifest(self, ref: Ref) -> ManifestInfo | None:
        resp = self.request(
            "HEAD",
            ref,
            f"/v2/{ref.repository}/manifests/{ref.reference}",
            what="manifest HEAD",
            ok=(200,),
            missing_ok=True,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if resp.status_code == 404:
            return None
        require_not_html(resp, ref.name, "manifest HEAD")
        digest = resp.headers.get("Docker-Content-Digest") or ref.digest
        if not digest:  # some registries omit it on HEAD: GET and hash
            data, media, digest = self.get_manifest(ref)
            return ManifestInfo(digest, media, len(data))
        media = resp.headers.get("Content-Type", "").split(";")[0]
        return ManifestInfo(digest, media, int(resp.headers.get("Content-Length", 0)))

    def head_manifest(self, ref: Ref) -> ManifestInfo | None:
        """Digest and type of what ``ref`` points at, or None when it does not exist."""
        return self.retrying("manifest HEAD", ref, lambda: self._head_manifest(ref))

    def probe_manifest(self, ref: Ref) -> ManifestInfo | None:
        """``head_manifest`` for a look that only saves work: a 500 answer means "not
        known" (None), like an absent tag (see ``shortcut``). Only for callers to whom
        acting as if the tag were absent is harmless: publishing PUTs the same manifest to
        the tag again, which rewrites a tag the registry could not read."""

        def head() -> ManifestInfo | None:
            return shortcut(lambda: self._head_manifest(ref), None, "tag HEAD", ref)

        return self.retrying("manifest HEAD", ref, head)

    def get_manifest(self, ref: Ref) -> tuple[bytes, str, str]:
        """(bytes, media type, digest); the digest is computed, and checked when pinned."""
        found = self.find_manifest(ref)
        if found is None:
            raise RegistryError(f"manifest unknown: {ref}", status=404)
        return found

    def find_manifest(self, ref: Ref) -> tuple[bytes, str, str] | None:
        """``get_manifest``, or None when there is none: one GET, no HEAD before it."""

        def get() -> requests.Response:
            return self.request(
                "GET",
                ref,
                f"/v2/{ref.repository}/manifests/{ref.reference}",
                what="manifest",
                ok=(200,),
                missing_ok=True,
                headers={"Accept": MANIFEST_ACCEPT},
            )

        resp = self.retrying("manifest GET", ref, get)
        if resp.status_code == 404:
            self.memory.saw(ref, ref.reference, None)
            return None
        require_not_html(resp, ref.name, "manifest GET")
        data = resp.content
        if ref.digest:
            verify_digest(data, ref.digest, what=str(ref))
        digest = digest_of(data)
        self.memory.saw(ref, ref.reference, digest)
        return data, media_type_of(data, resp.headers.get("Content-Type")), digest

    def put_manifest(self, ref: Ref, data: bytes, media_type: str, reference: str) -> str:
        """PUT manifest bytes under ``reference`` (a digest or a tag); returns their digest."""

        digest = digest_of(data)

        def put() -> None:
            resp = self.request(
                "PUT",
                ref,
                f"/v2/{ref.repository}/manifests/{reference}",
                what=f"manifest PUT {reference[:19]}",
                ok=(201,),
                data=data,
                headers={"Content-Type": media_type},
            )
            require_digest(resp, ref, digest, f"manifest PUT {reference[:19]}")

        self.retrying(f"manifest PUT {reference[:19]}", ref, put)
        self.memory.saw(ref, reference, digest, written=True)
        return digest

    def list_tags(self, ref: Ref) -> list[str]:
        """Every tag of the repository, following ``Link`` pagination."""
        tags: list[str] = []
        url: str | None = f"/v2/{ref.repository}/tags/list"
        while url:
            page_url = url

            def get(page_url: str = page_url) -> requests.Response:
                return self.request(
                    "GET", ref, page_url, what="tag list", ok=(200,), missing_ok=True
                )

            resp = self.retrying("tag list", ref, get)
            if resp.status_code == 404:
                return []
            tags += resp.json().get("tags") or []
            url = resp.links.get("next", {}).get("url")
        return tags


def client_from_config(
    registry: RegistrySection,
    *,
    insecure: bool | None = None,
    ca_bundle: Path | None = None,
    tls_verify: bool = True,
    authfile: Path | None = None,
) -> RegistryClient:
    """A client with the workspace's registry settings; CLI flags override them.

    ``insecure`` is plain HTTP (``--plain-http``); ``tls_verify`` False skips certificate
    checks (``--insecure``); ``authfile`` replaces docker's config as the credentials file.
    """
    client = RegistryClient(
        insecure=(True if registry.insecure else None) if insecure is None else insecure,
        ca_bundle=ca_bundle or registry.ca_bundle,
        retry=RetryPolicy(total=float(registry.retry_seconds)),
        tls_verify=tls_verify,
    )
    from publisher.authfile import auth_file

    client.use_authfile(auth_file(authfile))
    return client
