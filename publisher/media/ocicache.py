"""The per-user cache of kernel artifacts (publisher/media/ocikernel.py): blobs by digest,
what tags last meant, which digests a key has verified, modules layers unpacked once.

Everything read back is checked again (a blob against its digest), so a damaged cache is
dropped, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from guest.contract.oci import Ref, digest_of
from publisher.media import cpio
from publisher.media.debs import user_cache_dir

log = structlog.get_logger(__name__)


class OciKernelError(CloudbootError):
    pass


def safe_member(path: str) -> PurePosixPath | None:
    """A cpio member path made relative; None for '.', '..' escapes and empty names."""
    rel = PurePosixPath(path.lstrip("/"))
    if not rel.parts or rel.parts == (".",) or ".." in rel.parts:
        return None
    return rel


class OciCache:
    """``$XDG_CACHE_HOME/cloudboot/oci``: blobs by digest, what tags last meant, checks done."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or user_cache_dir("oci")

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def read_blob(self, digest: str) -> bytes | None:
        """A cached blob, re-hashed: a damaged cache file is dropped, never used."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if digest_of(data) != digest:
            log.warning(
                "cached blob does not match its digest; dropping it", digest=digest, path=str(path)
            )
            path.unlink(missing_ok=True)
            return None
        return data

    def write_blob(self, digest: str, data: bytes) -> Path:
        if digest_of(data) != digest:  # callers pass verified data; this guards the cache
            raise OciKernelError(f"refusing to cache {digest}: content digest differs")
        path = self.blob_path(digest)
        write_atomic(path, data)
        return path

    def _tag_record(self, ref: Ref) -> Path:
        name = hashlib.sha256(f"{ref.name}:{ref.tag}".encode()).hexdigest()[:32]
        return self.root / "tags" / f"{name}.json"

    def remember_tag(self, ref: Ref, digest: str) -> None:
        doc = {"ref": f"{ref.name}:{ref.tag}", "digest": digest, "resolved_at": int(time.time())}
        write_atomic(self._tag_record(ref), json.dumps(doc).encode())

    def last_tag(self, ref: Ref) -> tuple[str, int] | None:
        """(digest, unix time) the tag resolved to last, if it ever was."""
        try:
            doc = json.loads(self._tag_record(ref).read_text())
            return str(doc["digest"]), int(doc["resolved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _verified_mark(self, repository: str, digest: str, public_key: bytes) -> Path:
        """Per repository too: cosign keeps signatures next to the image, so a digest
        verified in one repository says nothing about what another one carries."""
        key_id = hashlib.sha256(repository.encode() + b"\0" + public_key).hexdigest()[:24]
        return self.root / "verified" / f"{digest.replace(':', '-')}-{key_id}"

    def was_verified(self, repository: str, digest: str, public_key: bytes) -> bool:
        return self._verified_mark(repository, digest, public_key).is_file()

    def mark_verified(self, repository: str, digest: str, public_key: bytes) -> None:
        mark = self._verified_mark(repository, digest, public_key)
        write_atomic(mark, f"{repository}@{digest}\n".encode())

    def modules_tree(self, digest: str, blob: Callable[[], bytes], what: str) -> Path:
        """The modules layer unpacked once (temp dir renamed into place) under its digest."""
        target = self.root / "modules" / digest.partition(":")[2]
        if target.is_dir():
            return target
        try:
            entries = cpio.parse_newc(cpio.decompress(blob()))
        except (CloudbootError, OSError, EOFError) as exc:
            raise OciKernelError(
                f"{what}: modules layer is not a (compressed) newc cpio: {exc}"
            ) from None
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for entry in entries:
                rel = safe_member(entry.path)
                if rel is None:
                    continue
                dest = tmp.joinpath(*rel.parts)
                if stat.S_ISDIR(entry.mode):
                    dest.mkdir(parents=True, exist_ok=True)
                elif stat.S_ISREG(entry.mode):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(entry.data)
                # symlinks (build/, source/) and device nodes are of no use to the initramfs
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
