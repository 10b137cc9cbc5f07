"""NVRAM ("back to the menu"): replace a stopped VM's variable store.

QEMU: copy the firmware's VARS template over the per-VM vars file. vfkit: delete the
store so the next launch passes ``create`` (vfkit then writes a fresh one). Either way
the guest finds no Boot0001 and runs the agent again. Only ever with the VM stopped:
the firmware of a running VM holds the store and would write its own copy back.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from guest.contract.fsutil import atomic_file


def restore_template(store: Path, template: Path) -> None:
    """Atomically and durably make ``store`` a byte-for-byte copy of ``template``."""
    with atomic_file(store, durable=True) as out, open(template, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


def delete_store(store: Path) -> None:
    store.unlink(missing_ok=True)


@dataclass(frozen=True)
class NvramInfo:
    """What ``vm status`` says about the store: where, how big, and is it pristine."""

    path: Path
    exists: bool
    size: int
    sha256: str
    pristine: bool | None  # equal to the template; None when there is no template to compare

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "exists": self.exists,
            "size": self.size,
            "sha256": self.sha256,
            "pristine": self.pristine,
        }


def _digest(path: Path) -> str:
    stat = path.stat()
    return _digest_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest_cached(path: Path, size: int, mtime_ns: int) -> str:
    """Keyed on size and mtime: AAVMF stores are 64 MiB, and status is asked often."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(store: Path, template: Path | None) -> NvramInfo:
    if not store.is_file():
        return NvramInfo(store, False, 0, "", None)
    digest = _digest(store)
    pristine = None
    if template is not None and template.is_file():
        pristine = digest == _digest(template)
    return NvramInfo(store, True, store.stat().st_size, digest, pristine)
