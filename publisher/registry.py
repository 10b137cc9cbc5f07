"""An OCI distribution client for publishing: blobs, manifests, tags, with retries and auth.

Written on ``requests`` rather than on oras-py's provider because each of the things
oras-py does its own way hurt here (spec section 8): it prints to stdout, sleeps up to
~2 minutes in its retry decorator, reads whole files into memory, and re-serialises
manifests. This client keeps one ``requests.Session`` (pooled connections, cached bearer
tokens) so the watcher can publish in-process per edit in a few milliseconds.

Every operation (upload one blob, put one manifest ...) is retried as a unit with
exponential backoff and jitter on connection errors, 5xx, 408 and 429, within a bounded
total time; other 4xx fail at once with a message that names the registry and repository.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import requests
import structlog

from guest.oci import MANIFEST_ACCEPT, Ref, digest_of, media_type_of, verify_digest
from publisher.auth import (
    Credentials,
    TokenCache,
    docker_config_path,
    lookup_credentials,
    parse_challenge,
    token_from_response,
)
from publisher.blob import Blob
from publisher.config import RegistrySection
from publisher.retry import (
    RegistryError,
    RegistryUnavailableError,
    RetryPolicy,
    TransientRegistryError,
    parse_retry_after,
    retry_call,
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

#: Blobs above this size are sent in PATCH chunks read from disk, never held in memory.
CHUNK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass
class RegistryClient:
    """A reusable client; one instance per process is enough for any number of registries."""

    insecure: bool | None = None  # True: plain HTTP; False: HTTPS; None: HTTP on loopback only
    ca_bundle: Path | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    chunk_size: int = CHUNK_SIZE
    credentials: Callable[[str], Credentials | None] = lookup_credentials
    session: requests.Session = field(default_factory=requests.Session)
    tokens: TokenCache = field(default_factory=TokenCache)
    uploaded_bytes: int = 0  # running total of blob bytes sent, for reports and bench

    def __post_init__(self) -> None:
        # Passed on every request: a session-level setting loses to $REQUESTS_CA_BUNDLE.
        self._verify: str | bool = str(self.ca_bundle) if self.ca_bundle else True
        self._basic: dict[str, str] = {}  # registry -> Basic header once a 401 asked for it
        self._bearer_scope: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._creds: dict[str, Credentials | None] = {}
        # Blobs seen in a repository (HEAD 200 or uploaded by us): skipping their HEAD saves
        # a round trip per publish; forget_blobs() drops them if the registry lost any.
        self._present: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.session.close()

    def _known(self, ref: Ref, digest: str) -> None:
        with self._lock:
            self._present.add((ref.registry, ref.repository, digest))

    def forget_blobs(self) -> None:
        with self._lock:
            self._present.clear()

    def _has_blob(self, ref: Ref, digest: str) -> bool:
        """HEAD a blob (one exchange, no retry), answering from the cache when we can."""
        if (ref.registry, ref.repository, digest) in self._present:
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
            self._known(ref, digest)
        return resp.status_code == 200

    # --- plumbing -------------------------------------------------------------------------

    def base_url(self, ref: Ref) -> str:
        plain = ref.insecure_default if self.insecure is None else self.insecure
        scheme = "http" if plain else "https"
        return f"{scheme}://{ref.registry}"

    def _credentials_for(self, registry: str) -> Credentials | None:
        if registry not in self._creds:
            self._creds[registry] = self.credentials(registry)
        return self._creds[registry]

    def _auth_header(self, ref: Ref) -> str | None:
        key = self._bearer_scope.get((ref.registry, ref.repository))
        if key and (token := self.tokens.get(key)):
            return f"Bearer {token}"
        return self._basic.get(ref.registry)

    def _answer_challenge(self, ref: Ref, header: str, used: str | None) -> bool:
        """Prepare auth for a retry after a 401; False when we have nothing new to offer.

        Serialised: concurrent requests of one publish that all met the challenge wait for
        the first to fetch a token and then reuse it, instead of each asking for one.
        """
        with self._auth_lock:
            current = self._auth_header(ref)
            if current is not None and current != used:
                return True  # another thread already obtained fresh auth
            return self._fetch_auth(ref, header)

    def _fetch_auth(self, ref: Ref, header: str) -> bool:
        challenge = parse_challenge(header)
        creds = self._credentials_for(ref.registry)
        if challenge.scheme == "basic":
            if creds is None or ref.registry in self._basic:
                return False
            self._basic[ref.registry] = creds.basic_header()
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope") or f"repository:{ref.repository}:pull,push"
        key = (realm, service, scope)
        if self._bearer_scope.get((ref.registry, ref.repository)) == key and self.tokens.get(key):
            return False  # that very token was just refused
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers = {"Authorization": creds.basic_header()} if creds else {}
        resp = self.session.get(
            realm, params=params, headers=headers, timeout=self.timeout, verify=self._verify
        )
        if resp.status_code in (401, 403):
            return False
        self._raise_for_status(resp, ref, "token request")
        token, lifetime = token_from_response(resp.json(), realm)
        self.tokens.put(key, token, lifetime)
        self._bearer_scope[(ref.registry, ref.repository)] = key
        return True

    def _raise_for_status(self, resp: requests.Response, ref: Ref, what: str) -> None:
        status = resp.status_code
        if status < 400:
            return
        where = ref.name
        if status in (401, 403):
            word = "unauthorized" if status == 401 else "forbidden"
            raise RegistryError(
                f"{status} {word} for {where}: check credentials in {_config_hint()}",
                status=status,
            )
        detail = _error_detail(resp)
        message = f"{status} {resp.reason or ''} for {where} ({what})".replace("  ", " ")
        if detail:
            message += f": {detail}"
        if status >= 500 or status in (408, 429):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise TransientRegistryError(message, status=status, retry_after=retry_after)
        raise RegistryError(message, status=status)

    def request(
        self,
        method: str,
        ref: Ref,
        url: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        missing_ok: bool = False,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One HTTP exchange with auth (answering at most one challenge); no retries here."""
        full = urljoin(self.base_url(ref) + "/", url.lstrip("/")) if "://" not in url else url
        for attempt in range(2):
            hdrs = dict(headers or {})
            if auth := self._auth_header(ref):
                hdrs["Authorization"] = auth
            try:
                resp = self.session.request(
                    method, full, headers=hdrs, timeout=self.timeout, verify=self._verify, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise RegistryError(
                    f"TLS verification failed for {ref.registry}: {_tls_reason(exc)};"
                    " pass --ca-bundle (or [registry].ca_bundle) for a private CA"
                ) from None
            if (
                resp.status_code == 401
                and attempt == 0
                and self._answer_challenge(
                    ref, resp.headers.get("WWW-Authenticate", ""), hdrs.get("Authorization")
                )
            ):
                continue
            break
        if resp.status_code in ok or (missing_ok and resp.status_code == 404):
            return resp
        self._raise_for_status(resp, ref, what)
        raise RegistryError(
            f"unexpected {resp.status_code} for {ref.name} ({what})", status=resp.status_code
        )

    def retrying(self, what: str, ref: Ref, operation: Callable[[], T]) -> T:
        """Run ``operation`` with bounded, jittered exponential backoff on transient faults."""
        return retry_call(what, ref.registry, self.retry, operation)

    # --- blobs ----------------------------------------------------------------------------

    def blob_exists(self, ref: Ref, digest: str) -> bool:
        return self.retrying("blob HEAD", ref, lambda: self._has_blob(ref, digest))

    def mount_blob(self, ref: Ref, digest: str, from_repository: str) -> bool:
        """Cross-repository mount (same registry): True when the blob is now in ``ref``'s repo."""

        def mount() -> bool:
            if self._has_blob(ref, digest):
                return True
            resp = self.request(
                "POST",
                ref,
                f"/v2/{ref.repository}/blobs/uploads/",
                what="blob mount",
                params={"mount": digest, "from": from_repository},
            )
            if resp.status_code == 201:
                self._known(ref, digest)
            return resp.status_code == 201

        return self.retrying("blob mount", ref, mount)

    def push_blob(self, ref: Ref, blob: Blob) -> int:
        """Upload ``blob`` unless the registry has it (HEAD first); returns bytes sent."""

        def upload() -> int:
            repo = ref.repository
            if self._has_blob(ref, blob.digest):
                return 0
            resp = self.request("POST", ref, f"/v2/{repo}/blobs/uploads/", what="blob upload start")
            location = resp.headers["Location"]
            sent = 0
            if blob.size > self.chunk_size:
                for chunk in blob.chunks(self.chunk_size):
                    resp = self.request(
                        "PATCH",
                        ref,
                        location,
                        what="blob chunk",
                        data=chunk,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                        },
                    )
                    location = resp.headers.get("Location", location)
                    sent += len(chunk)
                body = b""
            else:
                body = blob.data if blob.data is not None else b"".join(blob.chunks(blob.size))
                sent = len(body)
            sep = "&" if "?" in location else "?"
            self.request(
                "PUT",
                ref,
                f"{location}{sep}digest={blob.digest}",
                what="blob upload finish",
                data=body,
                headers={"Content-Type": "application/octet-stream"},
            )
            with self._lock:
                self.uploaded_bytes += sent
            self._known(ref, blob.digest)
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

    def head_manifest(self, ref: Ref) -> ManifestInfo | None:
        """Digest and type of what ``ref`` points at, or None when it does not exist."""

        def head() -> ManifestInfo | None:
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
            digest = resp.headers.get("Docker-Content-Digest") or ref.digest
            if not digest:  # some registries omit it on HEAD: GET and hash
                data, media, digest = self.get_manifest(ref)
                return ManifestInfo(digest, media, len(data))
            media = resp.headers.get("Content-Type", "").split(";")[0]
            return ManifestInfo(digest, media, int(resp.headers.get("Content-Length", 0)))

        return self.retrying("manifest HEAD", ref, head)

    def get_manifest(self, ref: Ref) -> tuple[bytes, str, str]:
        """(bytes, media type, digest); the digest is computed, and checked when pinned."""

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
            raise RegistryError(f"manifest unknown: {ref}", status=404)
        data = resp.content
        if ref.digest:
            verify_digest(data, ref.digest, what=str(ref))
        return data, media_type_of(data, resp.headers.get("Content-Type")), digest_of(data)

    def put_manifest(self, ref: Ref, data: bytes, media_type: str, reference: str) -> str:
        """PUT manifest bytes under ``reference`` (a digest or a tag); returns their digest."""

        def put() -> None:
            self.request(
                "PUT",
                ref,
                f"/v2/{ref.repository}/manifests/{reference}",
                what=f"manifest PUT {reference[:19]}",
                data=data,
                headers={"Content-Type": media_type},
            )

        self.retrying(f"manifest PUT {reference[:19]}", ref, put)
        return digest_of(data)

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


def _tls_reason(exc: requests.exceptions.SSLError) -> str:
    text = str(exc)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "hostname mismatch"):
        if marker in text:
            return marker.lower().replace("_", " ")
    return "handshake failed"


def _error_detail(resp: requests.Response) -> str:
    """The registry's own error code and message (``{"errors":[{"code","message"}]}``)."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')} {first.get('message', '')}".strip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _config_hint() -> str:
    path = docker_config_path()
    home = str(Path.home())
    shown = str(path)
    return "~" + shown[len(home) :] if shown.startswith(home) else shown


def client_from_config(
    registry: RegistrySection, *, insecure: bool | None = None, ca_bundle: Path | None = None
) -> RegistryClient:
    """A client with the workspace's registry settings; CLI flags override them."""
    return RegistryClient(
        insecure=(True if registry.insecure else None) if insecure is None else insecure,
        ca_bundle=ca_bundle or registry.ca_bundle,
        retry=RetryPolicy(total=float(registry.retry_seconds)),
    )
