"""Hostile ext4 disks (issue 13): each image is made by real mkfs.ext4, then the bytes an
attacker controls are patched (debugfs finds where they are). Before the bounds, the first
one made PID 1 walk forever, the symlink chain took minutes, the huge sparse kernel was
handed to staging whole and a bad inode type escaped as a bare ``InodeError``.
"""

from __future__ import annotations

import os
import re
import struct
import tracemalloc
from pathlib import Path

import pytest

from guest.agent.diskread import (
    MAX_SYMLINK_BYTES,
    MAX_WALK_STEPS,
    DiskReadError,
    Ext4Reader,
)
from guest.agent.disks.bootfiles import read_boot_files
from guest.agent.stage import MAX_BOOT_FILE, DeviceRuns, copy_into
from publisher.run import require_tool, run

BLOCK = 4096
KERNEL = "boot/vmlinuz-6.1.0-1-amd64"


def _mkfs(tree: Path, image: Path, size: str = "16M") -> Path:
    run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-L", "root", "-d", tree, image, size])
    return image


def _debugfs(image: Path, request: str, *, write: bool = False) -> str:
    debugfs = require_tool("debugfs", "e2fsprogs")
    argv = [debugfs, *(["-w"] if write else []), "-R", request, image]
    return run(argv).stdout.decode()


def _fragmented_kernel(tmp_path: Path) -> tuple[Path, int, int]:
    """A kernel in 8 extents (so its extent tree has an index level), the block of its
    extent leaf, and the byte offset of its inode."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    with open(tree / KERNEL, "wb") as f:
        for i in range(8):
            f.seek(i * 65536)
            f.write(b"K" * BLOCK)
    image = _mkfs(tree, tmp_path / "fs.img")
    leaf = re.search(r"\(ETB0\):(\d+)", _debugfs(image, f"stat /{KERNEL}"))
    where = re.search(
        r"located at block (\d+), offset (0x[0-9a-f]+)", _debugfs(image, f"imap /{KERNEL}")
    )
    assert leaf and where, "debugfs did not show the extent tree"
    return image, int(leaf.group(1)), int(where.group(1)) * BLOCK + int(where.group(2), 16)


def _patch(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_extent_index_pointing_at_its_own_block_is_refused(tmp_path: Path) -> None:
    image, leaf, _inode = _fragmented_kernel(tmp_path)
    # the leaf becomes an index node (depth 1) whose one entry is the leaf's own block
    _patch(image, leaf * BLOCK, struct.pack("<HHHHI", 0xF30A, 1, 340, 1, 0) +
           struct.pack("<IIHH", 0, leaf, 0, 0))  # fmt: skip
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError) as info:
        read_boot_files(fs)
    assert f"fs.img:/{KERNEL}" in str(info.value)
    assert f"extent node in block {leaf}: depth 1, expected 0" in str(info.value)


def test_extent_index_visiting_a_block_twice_is_refused(tmp_path: Path) -> None:
    """Two index entries to one block: no loop, but a tree whose walk can multiply."""
    image, leaf, inode = _fragmented_kernel(tmp_path)
    i_block = inode + 0x28
    _patch(image, i_block, struct.pack("<HHHH", 0xF30A, 2, 4, 1))
    _patch(image, i_block + 24, struct.pack("<IIHH", 0, leaf, 0, 0))
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError, match=f"block {leaf} again"):
        fs.locate(f"/{KERNEL}")


def test_symlink_chain_through_a_deep_tree_stops_at_the_step_cap(tmp_path: Path) -> None:
    """40 links, each ~4 KiB of ``a/a/.../../..`` through a 60-deep directory: legal for
    Linux, and minutes of re-walks for the old reader. Now a located error."""
    tree = tmp_path / "tree"
    deep = tree.joinpath(*["a"] * 60)
    deep.mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / KERNEL).write_bytes(b"MZ kernel")
    cycle = "a/" * 60 + "../" * 60
    for i in range(40):
        nxt = f"l{i + 1}" if i < 39 else KERNEL
        target = cycle * ((MAX_SYMLINK_BYTES - len(nxt)) // len(cycle)) + nxt
        (tree / f"l{i}").symlink_to(target)
    image = _mkfs(tree, tmp_path / "fs.img", "32M")
    with Ext4Reader.open(image) as fs:
        with pytest.raises(
            DiskReadError, match=f"fs.img:/l0: path walk longer than {MAX_WALK_STEPS}"
        ):
            fs.locate("/l0")
        # the same tree read the ordinary way still works
        assert fs.read(f"/{KERNEL}")[1] == b"MZ kernel"
        assert fs.read("/a/a/../a/../../" + KERNEL)[1] == b"MZ kernel"


def test_huge_sparse_kernel_is_refused_before_staging(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    with open(tree / "boot/vmlinuz-9.9-amd64", "wb") as f:
        f.write(b"MZ")
        f.truncate(MAX_BOOT_FILE + BLOCK)  # 512 MiB of hole: a few blocks on the disk
    image = _mkfs(tree, tmp_path / "fs.img")
    assert image.stat().st_size == 16 << 20
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError) as info:
        read_boot_files(fs)
    assert str(info.value) == (
        f"{image}:/boot/vmlinuz-9.9-amd64: {MAX_BOOT_FILE + BLOCK} bytes, "
        f"more than the {MAX_BOOT_FILE} allowed"
    )


def test_holes_are_written_in_bounded_chunks() -> None:
    """A 256 MiB hole staged to a file: written from one small buffer, never allocated."""
    runs = DeviceRuns(Path("/dev/zero"), ((None, 256 << 20), (0, 10)))
    fd = os.open("/dev/null", os.O_WRONLY)
    tracemalloc.start()
    try:
        copy_into(fd, runs)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert peak < 4 << 20, peak


def test_package_exceptions_become_located_errors(tmp_path: Path) -> None:
    """The root directory's entry for ``boot`` gets a file type byte that does not exist:
    the package raises its own ValueError, the agent sees a DiskReadError naming the
    device and the path."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / KERNEL).write_bytes(b"MZ")
    image = _mkfs(tree, tmp_path / "fs.img")
    found = re.search(r"\(0\):(\d+)", _debugfs(image, "stat /"))
    assert found, "debugfs did not show the root directory's block"
    root = int(found.group(1)) * BLOCK
    at = image.read_bytes()[root : root + BLOCK].index(b"\x04\x02boot")  # name_len, type
    _patch(image, root + at + 1, b"\x77")
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError) as info:
        fs.locate(f"/{KERNEL}")
    assert str(info.value).startswith(f"{image}:/{KERNEL}: unreadable filesystem structure")


def test_reader_deadline(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / KERNEL).write_bytes(b"MZ")
    image = _mkfs(tree, tmp_path / "fs.img")
    with Ext4Reader.open(image, seconds=0) as fs, pytest.raises(DiskReadError, match="gave up"):
        fs.locate(f"/{KERNEL}")
