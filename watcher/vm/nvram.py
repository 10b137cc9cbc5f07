"""NVRAM ("back to the menu"): replace or edit a stopped VM's variable store.

Replace: QEMU copies the firmware's VARS template over the per-VM vars file; vfkit
deletes the store so the next launch passes ``create`` (vfkit then writes a fresh one).
Edit (QEMU only, ``vm reset-nvram --menu``): the guest's own reset
(``varstore.forget_staged_target``) on the edk2 vars file, every other variable kept.
Either way the guest finds no Boot0001 and runs the agent again. Only ever with the VM
stopped (the backend checks, under its lock): the firmware of a running VM holds the
store and would write its own copy back.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from guest.contract.efi.edk2vars import VarsFile
from guest.contract.efi.varstore import forget_staged_target
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import atomic_file, write_atomic


def restore_template(store: Path, template: Path) -> None:
    """Atomically and durably make ``store`` a byte-for-byte copy of ``template``."""
    with atomic_file(store, durable=True) as out, open(template, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


def forget_staged_target_in(store: Path) -> bool:
    """Edit a stopped QEMU VM's vars file as ``cloudboot-reset`` edits the guest's
    variables; True when anything changed (only then is the file rewritten).

    A store the firmware never initialised (AAVMF's blank flash) holds no boot entries.
    """
    image = store.read_bytes()
    if not image.strip(b"\x00\xff"):
        return False
    try:
        vars_file = VarsFile.from_bytes(image)
    except CloudbootError as exc:
        raise CloudbootError(exc.message, where=f"{store}: {exc.where}") from exc
    if not forget_staged_target(vars_file):
        return False
    write_atomic(store, bytes(vars_file), durable=True)
    return True


def settled_path(store: Path, key: str) -> Path:
    """Where the settled copy of ``store`` for ``key`` lives (watcher/vm/settle.py)."""
    return store.with_name(f"{store.name}.settled-{key}")


def settled_copies(store: Path) -> list[Path]:
    return sorted(store.parent.glob(f"{store.name}.settled-*"))


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
    settled: bool = False  # equal to the firmware's settled copy (what a restart restores)

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "exists": self.exists,
            "size": self.size,
            "sha256": self.sha256,
            "pristine": self.pristine,
            "settled": self.settled,
        }


def file_digest(path: Path) -> str:
    """sha256 of a file, recomputed only when its size or mtime changed."""
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
    digest = file_digest(store)
    pristine = None
    if template is not None and template.is_file():
        pristine = digest == file_digest(template)
    settled = any(file_digest(copy) == digest for copy in settled_copies(store))
    return NvramInfo(store, True, store.stat().st_size, digest, pristine, settled)
