"""A content-addressed store for the build's expensive intermediates (the compressed
initramfs per arch), so a ``kernel/recipe.toml`` cmdline edit re-assembles the UKI and
boot.iso without compressing the same initramfs again.

An entry is found by the key of its inputs (the caller's fingerprint of exactly what
produced it) and named by that key plus the sha256 of its bytes; a read checks the
bytes against that name, so a torn or edited entry is a miss, never a wrong boot.iso.
Entries are written atomically; the newest few per kind are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.fsutil import write_atomic

log = structlog.get_logger(__name__)

#: Entries kept per kind (e.g. one per arch and a few recent inputs each).
KEEP = 4
_NAME = re.compile(r"^(?P<kind>[\w.-]+)--(?P<key>[0-9a-f]{64})--(?P<sha>[0-9a-f]{64})$")


def stat_stamp(path: str | Path) -> list[object]:
    """A file as the caches' keys see it: path, size and mtime (None when missing)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError:
        return [name, None]
    return [name, st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class BlobCache:
    """``root``: a directory of its own (created on the first write)."""

    root: Path

    def get(self, kind: str, key: str) -> bytes | None:
        for path in sorted(self.root.glob(f"{kind}--{key}--*")):
            match = _NAME.match(path.name)
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if match and hashlib.sha256(data).hexdigest() == match["sha"]:
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: kept longest
                return data
            with contextlib.suppress(OSError):
                path.unlink()  # torn or tampered: drop it
        return None

    def drop(self, kind: str, key: str) -> None:
        """Forget every entry under ``key`` (a forced rebuild replaces, never adds one)."""
        for path in self.root.glob(f"{kind}--{key}--*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def put(self, kind: str, key: str, data: bytes) -> None:
        """Keep ``data``; a cache that cannot be written (a full disk) costs only speed."""
        name = f"{kind}--{key}--{hashlib.sha256(data).hexdigest()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.root / name, data)
        except OSError as exc:
            log.warning("build cache: not kept", path=str(self.root), error=exc.strerror)
            return
        self._prune(kind)

    def _prune(self, kind: str) -> None:
        entries = []
        for path in self.root.glob(f"{kind}--*"):
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime_ns, path))
        for _, path in sorted(entries, reverse=True)[KEEP:]:
            with contextlib.suppress(OSError):
                path.unlink()
