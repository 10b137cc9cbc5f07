"""The host loop's staging (watcher.watch.hoststage) on real images, checked independently.

A real demo target disk (ext4 with a Debian kernel), a real cache disk and the firmware's
own vars template: after staging, virt-firmware must read Boot0001 -> the target and
BootOrder 0001 from the vars file, and mtools must find on the cache ESP the very kernel
e2fsprogs' debugfs reads from the target disk. A plan the host cannot stage changes
neither image.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher.demodisk import ensure_demo_disk
from publisher.media.cachedisk import ensure_cache_disk
from tests.helpers import REPO
from watcher.vm.firmware import find_firmware
from watcher.watch.hoststage import stage_on_host

ESP_OFFSET = "@@1048576"  # the cache disk's ESP starts at LBA 2048


def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    disk = ensure_demo_disk(tmp_path / "demo.raw", Arch.X86_64).path
    ensure_cache_disk(tmp_path / "cache.raw", 64)
    shutil.copyfile(find_firmware(Arch.X86_64).vars_template, tmp_path / "vars.fd")
    return disk, tmp_path / "cache.raw", tmp_path / "vars.fd"


def tool(*argv: str | Path) -> bytes:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True).stdout


def test_host_staging_writes_what_the_guest_would(tmp_path: Path) -> None:
    disk, cache, vars_fd = images(tmp_path)
    staged = stage_on_host(REPO / "plans" / "default.hcl", Arch.X86_64, [disk], cache, vars_fd)
    assert staged.target == "alpha" and "cloudboot.demo=alpha" in staged.cmdline
    printed = tool(shutil.which("virt-fw-vars") or REPO / ".venv/bin/virt-fw-vars",
                   "--input", vars_fd, "--print").decode()  # fmt: skip
    assert 'title="cloud-boot alpha"' in printed
    assert "FilePath(\\EFI\\Linux\\alpha-vmlinuz.efi)" in printed
    assert "boot order: 0001" in printed
    kernels = [n for n in tool("debugfs", "-R", "ls -p /boot", disk).decode().split("/")
               if n.startswith("vmlinuz-")]  # fmt: skip
    source = tool("debugfs", "-R", f"cat /boot/{kernels[0]}", disk)
    on_esp = tool("mcopy", "-i", f"{cache}{ESP_OFFSET}", "::/EFI/Linux/alpha-vmlinuz.efi", "-")
    assert hashlib.sha256(on_esp).digest() == hashlib.sha256(source).digest()


def test_a_plan_the_host_cannot_stage_touches_nothing(tmp_path: Path) -> None:
    disk, cache, vars_fd = images(tmp_path)
    plan = tmp_path / "default.hcl"
    text = (REPO / "plans" / "default.hcl").read_text()
    plan.write_text(text.replace('"cloudboot.demo=${self.name}"', '"ip={{.IPSpec}}"', 1))
    before = (cache.read_bytes(), vars_fd.read_bytes())
    with pytest.raises(
        CloudbootError, match=r'needs the guest.s lease; use \[watch\] loop = "guest"'
    ):
        stage_on_host(plan, Arch.X86_64, [disk], cache, vars_fd)
    assert (cache.read_bytes(), vars_fd.read_bytes()) == before
