"""The one atomic-write helper: old or new bytes, never a mix, modes kept, temp files gone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guest.contract.fsutil import atomic_file, creating, replacing, write_atomic


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file"
    write_atomic(target, b"one")
    inode = target.stat().st_ino
    write_atomic(target, b"two", durable=True)
    assert target.read_bytes() == b"two"
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert _leftovers(target.parent) == []


def test_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target, durable=True) as out:
        out.write(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_secret_mode_from_the_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "key"
    with replacing(target, mode=0o600) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # before any byte lands
        tmp.write_bytes(b"secret")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_replaced_file_keeps_its_mode_and_new_one_follows_umask(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.write_bytes(b"x")
    kept.chmod(0o640)
    write_atomic(kept, b"y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new", b"z")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


def test_creating_keeps_the_first_writer(tmp_path: Path) -> None:
    """Two writers of one cache entry at once: the first one's bytes stay, under the same
    inode, so a reader that hashed them reads them again; the loser's temp file goes."""
    target = tmp_path / "cache" / "entry"
    with creating(target) as first, creating(target) as second:
        second.write_bytes(b"second")
        first.write_bytes(b"first")
    # the inner body (second) finished first, so it won
    assert target.read_bytes() == b"second"
    inode = target.stat().st_ino
    with creating(target) as later:
        later.write_bytes(b"later")
    assert (target.read_bytes(), target.stat().st_ino) == (b"second", inode)
    assert _leftovers(target.parent) == []


def test_creating_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError), creating(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert not target.exists() and _leftovers(tmp_path) == []
