"""publisher.media.lz4legacy: the kernel's legacy LZ4 framing, checked against the ``lz4``
command-line tool (Debian's, an independent implementation of the same format); that the
kernel itself unpacks it is shown by every QEMU boot of the repository's recipe."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from guest.contract.errors import FormatError
from publisher.media import cpio, lz4legacy
from publisher.run import require_tool, run

#: Three blocks: two full 8 MiB ones, compressible and not, and a short tail.
DATA = bytes(range(256)) * (lz4legacy.BLOCK // 256) + os.urandom(lz4legacy.BLOCK) + b"tail"


def test_round_trip_over_several_blocks_and_deterministic() -> None:
    packed = lz4legacy.compress(DATA)
    assert packed.startswith(lz4legacy.MAGIC) and len(packed) < len(DATA)
    assert lz4legacy.decompress(packed) == DATA
    assert lz4legacy.compress(DATA) == packed
    assert cpio.decompress(cpio.compress(DATA, cpio.Compression.LZ4)) == DATA


def test_the_lz4_tool_reads_ours_and_level_9_is_its_own_bytes() -> None:
    tool = require_tool("lz4", "lz4")
    packed = lz4legacy.compress(DATA)
    assert run([tool, "-d", "-c"], input=packed).stdout == DATA
    assert run([tool, "-l", "-9", "-c"], input=DATA).stdout == lz4legacy.compress(DATA, 9)
    # and ours reads the tool's, concatenated streams included (as the kernel does)
    theirs = run([tool, "-l", "-1", "-c"], input=b"first ").stdout
    assert lz4legacy.decompress(theirs + lz4legacy.compress(b"second")) == b"first second"


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"\x00" + b[1:], "bad magic"),
        (lambda b: b[:6], "truncated block length"),
        (lambda b: b[:-3], "truncated block"),
        (lambda b: b[:8] + b"\xff" * (len(b) - 8), "bad block"),
    ],
)
def test_broken_streams_are_errors_with_an_offset(
    mangle: Callable[[bytes], bytes], message: str
) -> None:
    packed = lz4legacy.compress(b"some initramfs bytes " * 100)
    with pytest.raises(FormatError, match=message):
        lz4legacy.decompress(mangle(packed))
