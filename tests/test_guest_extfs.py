"""guest.contract.extfs + guest.agent.diskread on the layouts a distribution's root can
have beyond plain mkfs.ext4 defaults, each image made by Debian's own mkfs: ext3-style
block maps (single, double indirect, holes), meta_bg group descriptors across many
groups, 1 KiB blocks; inline data refused by name; unknown features refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest.agent.diskread import DiskReadError, Ext4Reader
from guest.contract import extfs
from publisher.run import run


def _image(tmp_path: Path, tree: Path, *args: str, size: str = "64M") -> Path:
    image = tmp_path / "fs.img"
    run(["mkfs.ext4", "-q", "-F", *args, "-d", tree, image, size])
    return image


def _sparse(path: Path, head: bytes, hole: int, tail: bytes) -> bytes:
    with open(path, "wb") as f:
        f.write(head)
        f.seek(len(head) + hole)
        f.write(tail)
    return head + bytes(hole) + tail


def test_block_mapped_files_read_through_indirect_blocks_and_holes(tmp_path: Path) -> None:
    """ext3 layout (no extents), 1 KiB blocks: a 3 MiB kernel needs the double-indirect
    block; a hole in the middle reads as zeros, as the kernel reads it."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    kernel = os.urandom(3 << 20)
    (tree / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(kernel)
    initrd = _sparse(tree / "boot/initrd.img-6.1.0-1-amd64", os.urandom(5000), 300_000,
                     os.urandom(7000))  # fmt: skip
    image = _image(tmp_path, tree, "-t", "ext3", "-b", "1024")
    with Ext4Reader.open(image) as fs:
        assert not fs._inode(2, "root").flags & extfs.EXTENTS_FL  # really block-mapped
        assert fs.read("/boot/vmlinuz-6.1.0-1-amd64")[1] == kernel
        _canon, runs = fs.locate("/boot/initrd.img-6.1.0-1-amd64")
        assert runs.read() == initrd  # type: ignore[union-attr]
        assert any(offset is None for offset, _ in runs.runs)  # type: ignore[union-attr]


def test_meta_bg_descriptors_across_many_groups(tmp_path: Path) -> None:
    """meta_bg puts each block of group descriptors inside its own meta group: with 8
    inodes per group, 1 KiB blocks and 16 descriptors per block, the last files' inodes
    are in groups whose descriptors are not next to the superblock."""
    tree = tmp_path / "tree"
    tree.mkdir()
    files = {f"/f{i}": os.urandom(100 + i) for i in range(150)}
    for path, data in files.items():
        (tree / path[1:]).write_bytes(data)
    image = _image(tmp_path, tree, "-b", "1024", "-i", "1048576", "-O",
                   "meta_bg,^resize_inode", size="256M")  # fmt: skip
    with Ext4Reader.open(image) as fs:
        assert fs.sb.incompat & extfs.INCOMPAT_META_BG
        per_block = fs.sb.block_size // fs.sb.desc_size
        groups = {fs.sb.inode_location(fs.resolve(p)[1].number)[0] for p in files}
        assert max(groups) >= per_block  # a second meta group
        assert {p: fs.read(p)[1] for p in files} == files


def test_inline_data_is_refused_by_name(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/tiny").write_bytes(b"MZ")
    image = _image(tmp_path, tree, "-O", "inline_data", size="16M")
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError, match="inline data"):
        fs.locate("/boot/tiny")


def test_unknown_incompatible_feature_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    image = _image(tmp_path, tree, size="16M")
    with open(image, "r+b") as f:
        f.seek(extfs.SUPERBLOCK_OFFSET + 0x60)
        incompat = int.from_bytes(f.read(4), "little") | 0x40000000
        f.seek(extfs.SUPERBLOCK_OFFSET + 0x60)
        f.write(incompat.to_bytes(4, "little"))
    with pytest.raises(DiskReadError, match="incompatible features 0x40000000"):
        Ext4Reader.open(image)
