"""A volume made of linear pieces of block devices (md RAID1 members, LVM segments),
read as one seekable stream, and file runs mapped back onto the device that holds them.

md RAID1 is a mirror: one in-sync member at its data offset *is* the array. A linear
LVM logical volume is its segments laid end to end. So neither needs the kernel's md or
device-mapper: the filesystem reader reads this stream, and when a file it found lies on
one device, staging still copies it device -> ESP with ``sendfile`` (``to_device``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from guest.contract.errors import CloudbootError


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of the volume from ``start`` lie on ``node`` at ``offset``."""

    start: int
    length: int
    node: Path
    offset: int


class VolumeStream(io.RawIOBase):
    """A read-only, seekable stream of ``_size`` bytes; subclasses fill ``readinto``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


class LinearStream(VolumeStream):
    """The pieces in order, as one read-only seekable stream (files opened on demand)."""

    def __init__(self, pieces: tuple[Piece, ...], where: str) -> None:
        super().__init__(sum(p.length for p in pieces))
        self.pieces = pieces
        self.where = where
        self._files: dict[Path, BinaryIO] = {}

    def _file(self, node: Path) -> BinaryIO:
        if node not in self._files:
            try:
                self._files[node] = open(node, "rb", buffering=0)  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise CloudbootError(f"cannot open: {exc.strerror}", where=str(node)) from exc
        return self._files[node]

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        for piece in self.pieces:
            if piece.start <= self._pos < piece.start + piece.length:
                want = min(len(buffer), piece.start + piece.length - self._pos)
                fd = self._file(piece.node).fileno()
                data = os.pread(fd, want, piece.offset + self._pos - piece.start)
                if len(data) != want:
                    raise CloudbootError("device ended early", where=f"{piece.node}")
                buffer[:want] = data
                self._pos += want
                return want
        return 0

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        super().close()


def to_device(
    runs: tuple[tuple[int | None, int], ...], pieces: tuple[Piece, ...]
) -> tuple[Path, tuple[tuple[int | None, int], ...]] | None:
    """``runs`` (volume offsets) as runs on one device, or None when they span several."""
    node: Path | None = None
    out: list[tuple[int | None, int]] = []
    for start, length in runs:
        if start is None:
            out.append((None, length))
            continue
        at, left = start, length
        while left:
            piece = next((p for p in pieces if p.start <= at < p.start + p.length), None)
            if piece is None:
                raise CloudbootError(f"volume offset {at} is outside the volume")
            if node is not None and piece.node != node:
                return None
            node = piece.node
            take = min(left, piece.start + piece.length - at)
            out.append((piece.offset + at - piece.start, take))
            at, left = at + take, left - take
    return (node, tuple(out)) if node is not None else None
