"""Blobs: content to upload, the upload protocol, open upload sessions, what is stored.

The distribution upload protocol is POST (open a session, get its ``Location``), then
PATCH chunks for big content and a final PUT with the digest. Opening a session does not
depend on the content, so a client that publishes to a repository again and again keeps
a few sessions open ahead of time (``OpenUploads``): a small blob then costs one PUT on
the critical path instead of a POST and a PUT.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.oci import Ref, digest_of
from publisher.distspec import require_digest, require_location

if TYPE_CHECKING:
    import requests

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Blob:
    """Content to upload: in memory (``data``) or a file streamed in chunks (``path``)."""

    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of_bytes(cls, data: bytes) -> Blob:
        return cls(digest_of(data), len(data), data=data)

    @classmethod
    def of_file(cls, path: Path) -> Blob:
        """Hash a file in chunks (kernels and initrds can be large)."""
        hasher, size = hashlib.sha256(), 0
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                hasher.update(chunk)
                size += len(chunk)
        return cls("sha256:" + hasher.hexdigest(), size, path=path)

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        """The content in pieces; a file's is checked against ``digest`` and ``size`` as
        it is read: the manifest naming this digest is already made, so a file replaced
        or rewritten since it was hashed must not be sent as if it were the same blob.
        The check runs before the generator ends, so the PUT a caller sends after the
        last piece (the one that commits the blob) is never sent for changed bytes."""
        if self.data is not None:
            for i in range(0, max(len(self.data), 1), chunk_size):
                yield self.data[i : i + chunk_size]
            return
        assert self.path is not None
        hasher, size = hashlib.sha256(), 0
        with self.path.open("rb") as f:
            while chunk := f.read(chunk_size):
                size += len(chunk)
                if size > self.size:  # grown: no need to read on
                    break
                hasher.update(chunk)
                yield chunk
        if (size, "sha256:" + hasher.hexdigest()) != (self.size, self.digest):
            now = f"{size} bytes" if size <= self.size else "more bytes"
            raise ContentChangedError(
                f"changed while it was being pushed (hashed as {self.digest}, {self.size}"
                f" bytes; now {now} that hash differently): the upload was left unfinished;"
                " push again",
                where=str(self.path),
            )


class ContentChangedError(CloudbootError):
    """A file blob whose bytes are no longer those its digest was computed from."""


class StoreMemory:
    """What one client has seen stored in registries, so it can skip asking again.

    Blobs seen in a repository (HEAD 200 or uploaded by us) need no HEAD on the next
    publish; the digest each tag was last seen at lets a publish skip the tag lookup when
    the tag has to move anyway; repositories the client writes to get small new blobs
    uploaded without a HEAD first. It is only a belief: ``forget`` drops it when a
    registry turns out to have lost content. Shared by the threads of one publish.
    """

    def __init__(self) -> None:
        self._blobs: set[tuple[str, str, str]] = set()
        self._tags: dict[tuple[str, str, str], str] = {}
        self._writing: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def has_blob(self, ref: Ref, digest: str) -> bool:
        return (ref.registry, ref.repository, digest) in self._blobs

    def add_blob(self, ref: Ref, digest: str, *, written: bool = False) -> None:
        with self._lock:
            self._blobs.add((ref.registry, ref.repository, digest))
            if written:
                self._writing.add((ref.registry, ref.repository))

    def writes_to(self, ref: Ref) -> bool:
        return (ref.registry, ref.repository) in self._writing

    def tag(self, ref: Ref) -> str | None:
        """The digest ``ref``'s tag was last seen at or put to (None: unknown or absent)."""
        return self._tags.get((ref.registry, ref.repository, ref.reference))

    def saw(self, ref: Ref, reference: str, digest: str | None, *, written: bool = False) -> None:
        """Record what ``reference`` (a tag or digest) in ``ref``'s repository holds."""
        with self._lock:
            if written:
                self._writing.add((ref.registry, ref.repository))
            if reference.startswith("sha256:"):
                return
            key = (ref.registry, ref.repository, reference)
            if digest is None:
                self._tags.pop(key, None)
            else:
                self._tags[key] = digest

    def forget(self, ref: Ref | None = None) -> None:
        """Drop every belief, or those about ``ref``'s repository."""
        with self._lock:
            if ref is None:
                self._blobs.clear()
                self._tags.clear()
                self._writing.clear()
                return
            repo = (ref.registry, ref.repository)
            self._blobs = {b for b in self._blobs if b[:2] != repo}
            self._tags = {t: d for t, d in self._tags.items() if t[:2] != repo}
            self._writing.discard(repo)


class Requester(Protocol):
    """``RegistryClient.request``: one authenticated exchange, errors raised, no retries."""

    def __call__(
        self, method: str, ref: Ref, url: str, *, what: str, **kwargs: Any
    ) -> requests.Response: ...


def open_upload(request: Requester, ref: Ref) -> str:
    """Start an upload session in ``ref``'s repository; its URL for PATCH/PUT."""
    resp = request(
        "POST", ref, f"/v2/{ref.repository}/blobs/uploads/", what="blob upload start", ok=(202,)
    )
    return require_location(resp, ref, "blob upload start")


def send_blob(request: Requester, ref: Ref, location: str, blob: Blob, chunk_size: int) -> int:
    """Send ``blob`` into the open session at ``location``; returns the bytes sent.

    Up to ``chunk_size`` it is one PUT; above, PATCH chunks streamed from disk and an
    empty closing PUT, so a kernel is never held in memory whole.
    """
    sent = 0
    if blob.size > chunk_size:
        for chunk in blob.chunks(chunk_size):
            resp = request(
                "PATCH",
                ref,
                location,
                what="blob chunk",
                ok=(202,),
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
        body = blob.data if blob.data is not None else b"".join(blob.chunks(max(blob.size, 1)))
        sent = len(body)
    sep = "&" if "?" in location else "?"
    resp = request(
        "PUT",
        ref,
        f"{location}{sep}digest={blob.digest}",
        what="blob upload finish",
        ok=(201,),
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    require_digest(resp, ref, blob.digest, "blob upload finish")
    return sent


class OpenUploads:
    """Upload sessions opened ahead of need, per repository; each is used at most once."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], list[tuple[Ref, str]]] = {}
        self._lock = threading.Lock()

    def take(self, ref: Ref) -> str | None:
        with self._lock:
            ready = self._open.get((ref.registry, ref.repository))
            return ready.pop()[1] if ready else None

    def add(self, ref: Ref, location: str) -> None:
        with self._lock:
            self._open.setdefault((ref.registry, ref.repository), []).append((ref, location))

    def count(self, ref: Ref) -> int:
        with self._lock:
            return len(self._open.get((ref.registry, ref.repository), []))

    def open_one(self, request: Requester, ref: Ref) -> None:
        """Open one more session (in the background: a failure only leaves one fewer)."""
        try:
            self.add(ref, open_upload(request, ref))
        except (CloudbootError, OSError) as exc:  # the publish that needs one opens its own
            log.debug("spare upload session not opened", ref=ref.name, reason=str(exc))

    def cancel_all(self, request: Requester) -> None:
        """DELETE every unused session, best effort (registries purge abandoned ones)."""
        with self._lock:
            ready = [item for items in self._open.values() for item in items]
            self._open.clear()
        for ref, location in ready:
            with contextlib.suppress(CloudbootError, OSError):
                request("DELETE", ref, location, what="upload cancel", timeout=2)
