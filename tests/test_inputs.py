"""publisher.inputs reads at most ``limit`` bytes whatever the file says its size is."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from publisher.inputs import InputError, read_input


@pytest.mark.parametrize(("size", "ok"), [(0, True), (1, True), (4096, True), (4097, False)])
def test_file_at_and_over_the_limit(tmp_path: Path, size: int, ok: bool) -> None:
    path = tmp_path / "p.hcl"
    path.write_bytes(b"x" * size)
    if ok:
        assert read_input(path, limit=4096, what="plan") == b"x" * size
    else:
        with pytest.raises(InputError, match="plan larger than 4096 bytes"):
            read_input(path, limit=4096, what="plan")


def test_a_file_whose_size_says_zero_is_read_whole() -> None:
    """/proc files report st_size 0: the read must not trust the size for the content."""
    data = read_input(Path("/proc/self/status"), limit=1 << 20, what="status")
    assert b"\nPid:" in data and data.endswith(b"\n")


@pytest.mark.parametrize(("size", "ok"), [(200_000, True), (200_001, False)])
def test_stdin_beyond_the_first_read(monkeypatch: pytest.MonkeyPatch, size: int, ok: bool) -> None:
    """stdin has no size: past the first 64 KiB the rest is read up to the limit."""
    fake = io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"y" * size)))
    monkeypatch.setattr(sys, "stdin", fake)
    if ok:
        assert read_input("-", limit=200_000, what="plan") == b"y" * size
    else:
        with pytest.raises(InputError, match="larger than 200000"):
            read_input("-", limit=200_000, what="plan")
