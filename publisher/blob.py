"""Content to upload: bytes in memory or a file streamed in chunks, with its digest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guest.oci import digest_of


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
        if self.data is not None:
            for i in range(0, max(len(self.data), 1), chunk_size):
                yield self.data[i : i + chunk_size]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk
