"""Filesystem storage of the builtin registry (``publisher.ociserver``): blobs, uploads, tags.

Kept apart from the HTTP layer so every rule a registry must keep (content is stored
under the digest it hashes to, a manifest is accepted only when everything it points at
is there, a tag names exactly one manifest) lives in plain functions over a directory.

Layout under the storage root::

    blobs/sha256/<hex>                  content, manifests included (write-once)
    uploads/<uuid>                      an upload session's bytes so far
    repositories/<name>/_layers/<hex>   empty: the blob is part of this repository
    repositories/<name>/_manifests/<hex>   the manifest's media type
    repositories/<name>/_tags/<tag>     the digest the tag points at

Every write goes to a temp file renamed into place, so a crash leaves either the old
state or the new one, and a concurrent reader never sees half a blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from guest.contract.fsutil import write_atomic
from guest.contract.oci import MEDIA_INDEX, MEDIA_MANIFEST

#: Repository names and tags as the distribution spec defines them.
NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
#: A manifest is read into memory to check it: bound it (distribution's own limit is 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024
#: An upload may not grow beyond this (boot media are tens of MiB; a disk image a few GiB).
MAX_BLOB = 16 * 1024**3
_INDEX_TYPES = (MEDIA_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
_MANIFEST_TYPES = (MEDIA_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")


class StoreError(Exception):
    """A request the registry refuses: ``code`` is the spec's error code, ``status`` HTTP."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StoredManifest:
    digest: str
    media_type: str
    path: Path


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs/sha256", "uploads", "repositories"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # --- names -------------------------------------------------------------------------

    def repo(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name) or len(name) > 255:
            raise StoreError(400, "NAME_INVALID", f"invalid repository name {name!r}")
        return self.root / "repositories" / name

    @staticmethod
    def check_digest(digest: str) -> str:
        if not DIGEST_RE.fullmatch(digest):
            raise StoreError(400, "DIGEST_INVALID", f"unsupported or malformed digest {digest!r}")
        return digest.partition(":")[2]

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / self.check_digest(digest)

    # --- blobs -------------------------------------------------------------------------

    def blob(self, name: str, digest: str) -> Path:
        """The content of a blob this repository holds, or BLOB_UNKNOWN."""
        hexpart = self.check_digest(digest)
        path = self.blob_path(digest)
        if not (self.repo(name) / "_layers" / hexpart).exists() or not path.is_file():
            raise StoreError(404, "BLOB_UNKNOWN", f"blob {digest} unknown to repository {name}")
        return path

    def link_blob(self, name: str, digest: str) -> None:
        link = self.repo(name) / "_layers" / self.check_digest(digest)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.touch()

    def mount(self, name: str, digest: str, source: str) -> bool:
        """Cross-repository mount: link an existing blob without sending it again."""
        try:
            self.blob(source, digest)
        except StoreError:
            return False
        self.link_blob(name, digest)
        return True

    def delete_blob(self, name: str, digest: str) -> None:
        self.blob(name, digest)
        (self.repo(name) / "_layers" / self.check_digest(digest)).unlink()

    # --- uploads -----------------------------------------------------------------------

    def start_upload(self, name: str) -> str:
        self.repo(name)
        upload = uuid.uuid4().hex
        (self.root / "uploads" / upload).write_bytes(b"")
        return upload

    def upload_path(self, upload: str) -> Path:
        path = self.root / "uploads" / upload
        if not re.fullmatch(r"[a-f0-9]{32}", upload) or not path.is_file():
            raise StoreError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload!r} unknown")
        return path

    def append(self, upload: str, chunks: Iterator[bytes], start: int | None) -> int:
        """Add a chunk to an upload; ``start`` (from Content-Range) must be where it ends now."""
        path = self.upload_path(upload)
        size = path.stat().st_size
        if start is not None and start != size:
            raise StoreError(
                416, "BLOB_UPLOAD_INVALID", f"chunk starts at {start}, upload has {size} bytes"
            )
        with path.open("ab") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_BLOB:
                    out.close()
                    path.unlink()
                    raise StoreError(413, "SIZE_INVALID", f"upload over {MAX_BLOB} bytes")
                out.write(chunk)
        return path.stat().st_size

    def finish(self, name: str, upload: str, digest: str) -> None:
        """Commit an upload under ``digest`` after hashing what was received."""
        self.check_digest(digest)
        path = self.upload_path(upload)
        sha = hashlib.sha256()
        with path.open("rb") as src:
            while block := src.read(1 << 20):
                sha.update(block)
        actual = f"sha256:{sha.hexdigest()}"
        if actual != digest:
            path.unlink()
            raise StoreError(400, "DIGEST_INVALID", f"content is {actual}, not {digest}")
        os.replace(path, self.blob_path(digest))
        self.link_blob(name, digest)

    def cancel(self, upload: str) -> None:
        self.upload_path(upload).unlink()

    # --- manifests and tags ------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest once everything it references is in this repository."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if DIGEST_RE.fullmatch(reference):
            if reference != digest:
                raise StoreError(400, "DIGEST_INVALID", f"manifest is {digest}, not {reference}")
        elif not TAG_RE.fullmatch(reference):
            raise StoreError(400, "TAG_INVALID", f"invalid tag {reference!r}")
        repo = self.repo(name)
        for child in self._references(data, media_type):
            if media_type in _INDEX_TYPES:
                found = (repo / "_manifests" / self.check_digest(child["digest"])).is_file()
            else:
                found = (repo / "_layers" / self.check_digest(child["digest"])).exists()
            if not found:
                code = "MANIFEST_BLOB_UNKNOWN"
                raise StoreError(400, code, f"manifest references unknown {child['digest']}")
        blob = self.blob_path(digest)
        if not blob.is_file():
            write_atomic(blob, data)
        write_atomic(repo / "_manifests" / digest.partition(":")[2], media_type.encode())
        if not DIGEST_RE.fullmatch(reference):
            write_atomic(repo / "_tags" / reference, digest.encode())
        return digest

    @staticmethod
    def _references(data: bytes, media_type: str) -> list[dict[str, str]]:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(400, "MANIFEST_INVALID", f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise StoreError(400, "MANIFEST_INVALID", "manifest is not a schemaVersion 2 object")
        declared = doc.get("mediaType")
        if declared and declared != media_type:
            raise StoreError(
                400, "MANIFEST_INVALID", f"Content-Type {media_type} but mediaType {declared}"
            )
        if media_type in _INDEX_TYPES:
            items = doc.get("manifests", [])
        elif media_type in _MANIFEST_TYPES:
            items = [doc.get("config"), *doc.get("layers", [])]
        else:
            raise StoreError(400, "MANIFEST_INVALID", f"unsupported manifest type {media_type!r}")
        refs = [i for i in items if isinstance(i, dict) and isinstance(i.get("digest"), str)]
        if len(refs) != len(items):
            raise StoreError(400, "MANIFEST_INVALID", "a descriptor lacks its digest")
        return refs

    def manifest(self, name: str, reference: str) -> StoredManifest:
        repo = self.repo(name)
        if DIGEST_RE.fullmatch(reference):
            digest = reference
        elif TAG_RE.fullmatch(reference) and (repo / "_tags" / reference).is_file():
            digest = (repo / "_tags" / reference).read_text()
        else:
            raise StoreError(404, "MANIFEST_UNKNOWN", f"manifest {reference!r} unknown in {name}")
        meta = repo / "_manifests" / digest.partition(":")[2]
        if not meta.is_file():
            raise StoreError(404, "MANIFEST_UNKNOWN", f"manifest {reference!r} unknown in {name}")
        return StoredManifest(digest, meta.read_text(), self.blob_path(digest))

    def delete_manifest(self, name: str, reference: str) -> None:
        if not DIGEST_RE.fullmatch(reference):
            raise StoreError(400, "UNSUPPORTED", "delete a manifest by digest, not by tag")
        found = self.manifest(name, reference)
        repo = self.repo(name)
        for tag in self.tags(name):
            if (repo / "_tags" / tag).read_text() == found.digest:
                (repo / "_tags" / tag).unlink()
        (repo / "_manifests" / found.digest.partition(":")[2]).unlink()

    def tags(self, name: str) -> list[str]:
        tags = self.repo(name) / "_tags"
        if not (self.repo(name)).is_dir():
            raise StoreError(404, "NAME_UNKNOWN", f"repository {name} unknown")
        return sorted(p.name for p in tags.iterdir()) if tags.is_dir() else []


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def copy_limited(src: Readable, length: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Read exactly ``length`` bytes from ``src`` in chunks (a short body ends early)."""
    left = length
    while left > 0:
        data = src.read(min(chunk, left))
        if not data:
            return
        left -= len(data)
        yield data
