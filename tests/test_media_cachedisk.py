"""menu-cache.raw: exact layout (sgdisk, mtools, fsck.vfat), idempotence, refusal, --force."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest.contract.efi.loadoption import CACHE_MARKER_TEXT
from guest.contract.gpt import CACHE_PARTITION_NAME, ESP_TYPE, SECTOR, last_usable_lba, read_gpt
from publisher.media.cachedisk import CacheDiskError, ensure_cache_disk
from publisher.run import run

MIB = 1024 * 1024


def test_layout_matches_the_spec(tmp_path: Path) -> None:
    disk = tmp_path / "menu-cache.raw"
    assert ensure_cache_disk(disk, 64) is True
    assert disk.stat().st_size == 64 * MIB
    with open(disk, "rb") as f:
        gpt = read_gpt(f)
    (part,) = gpt.partitions
    assert (part.number, part.type_guid, part.name) == (1, ESP_TYPE, CACHE_PARTITION_NAME)
    assert part.first_lba == 2048 and part.last_lba == last_usable_lba(64 * MIB // SECTOR)
    assert gpt.header.entry_count == 128 and gpt.header.entries_lba == 2
    verify = run(["sgdisk", "-v", disk]).stdout.decode()
    assert "No problems found" in verify, verify
    info = run(["sgdisk", "-i", "1", disk]).stdout.decode()
    assert f"Partition name: '{CACHE_PARTITION_NAME}'" in info
    listing = run(["mdir", "-b", "-i", f"{disk}@@{2048 * SECTOR}", "::/EFI"]).stdout.decode()
    assert sorted(listing.split()) == ["::/EFI/Linux/", "::/EFI/cloud-boot-cache"]
    marker = run(["mtype", "-i", f"{disk}@@{2048 * SECTOR}", "::/EFI/cloud-boot-cache"]).stdout
    assert marker == CACHE_MARKER_TEXT
    part_img = tmp_path / "p.img"
    with open(disk, "rb") as f:
        f.seek(part.first_lba * SECTOR)
        part_img.write_bytes(f.read(part.size_sectors * SECTOR))
    fsck = run(["fsck.vfat", "-n", part_img]).stdout.decode()
    assert "rror" not in fsck and "differ" not in fsck, fsck
    assert b"FAT32   " in part_img.read_bytes()[:512]


def test_existing_cache_disk_is_left_byte_for_byte(tmp_path: Path) -> None:
    disk = tmp_path / "c.raw"
    ensure_cache_disk(disk, 40)
    run(["mcopy", "-i", f"{disk}@@{2048 * SECTOR}", "/etc/hostname", "::/EFI/Linux/staged"])
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    mtime = disk.stat().st_mtime_ns
    assert ensure_cache_disk(disk, 256) is False
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert disk.stat().st_mtime_ns == mtime


def test_other_file_refused_unless_forced(tmp_path: Path) -> None:
    other = tmp_path / "precious.img"
    other.write_bytes(b"not a disk" * 100)
    with pytest.raises(CacheDiskError, match=r"not a cache disk.*--force") as err:
        ensure_cache_disk(other, 40)
    assert str(other) in str(err.value)
    assert other.read_bytes() == b"not a disk" * 100
    assert ensure_cache_disk(other, 40, force=True) is True
    assert other.stat().st_size == 40 * MIB
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_too_small_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheDiskError, match="at least"):
        ensure_cache_disk(tmp_path / "s.raw", 8)
    assert not (tmp_path / "s.raw").exists()


def test_cli_cache_disk(tmp_path: Path) -> None:
    cli = [os.fspath(Path(sys.executable).parent / "cloudboot"), "-C", os.fspath(tmp_path)]
    disk = tmp_path / "m.raw"
    first = subprocess.run([*cli, "cache-disk", disk, "--size-mib", "40"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert first.stdout.startswith("created")
    again = subprocess.run([*cli, "cache-disk", disk], capture_output=True, text=True, check=True)
    assert again.stdout.startswith("kept existing")
    (tmp_path / "x.raw").write_text("x")
    bad = subprocess.run([*cli, "cache-disk", tmp_path / "x.raw"], capture_output=True, text=True)
    assert bad.returncode == 1 and "error:" in bad.stderr and "--force" in bad.stderr


def test_cache_disk_without_the_marker_is_remade_only_when_forced(tmp_path: Path) -> None:
    """A disk made before the marker existed (or a stray ESP named cloud-boot-cache): the
    guest would refuse it, so cache-disk says so instead of calling it a cache disk."""
    disk = tmp_path / "old.raw"
    ensure_cache_disk(disk, 40)
    run(["mdel", "-i", f"{disk}@@{2048 * SECTOR}", "::/EFI/cloud-boot-cache"])
    before = disk.read_bytes()
    with pytest.raises(CacheDiskError, match=r"not a cache disk.*cloud-boot-cache.*--force"):
        ensure_cache_disk(disk, 40)
    assert disk.read_bytes() == before
    assert ensure_cache_disk(disk, 40, force=True) is True
    assert ensure_cache_disk(disk, 40) is False
