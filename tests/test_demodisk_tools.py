"""The demo target disk where mkfs.ext4 is not on PATH: Homebrew installs e2fsprogs keg-only,
so its mkfs.ext4 is found in the keg; with neither, the error names both install commands
and the base artifact (which ships the disk)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher import demodisk


def test_mkfs_from_homebrew_keg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    keg = tmp_path / "opt/e2fsprogs/sbin"
    keg.mkdir(parents=True)
    (keg / "mkfs.ext4").symlink_to(real)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(demodisk, "KEG_SBIN", (tmp_path / "nowhere", keg))
    assert demodisk.find_mkfs_ext4() == str(keg / "mkfs.ext4")
    disk = demodisk.ensure_demo_disk(tmp_path / "demo.raw", Arch.X86_64)
    assert disk.created and disk.path.read_bytes()[1080:1082] == b"\x53\xef"  # ext4 magic
    monkeypatch.setattr(demodisk, "KEG_SBIN", ())
    with pytest.raises(CloudbootError, match="brew install e2fsprogs") as info:
        demodisk.ensure_demo_disk(tmp_path / "other.raw", Arch.X86_64)
    assert "apt-get install e2fsprogs" in str(info.value) and "[base]" in str(info.value)
    assert not (tmp_path / "other.raw").exists()
