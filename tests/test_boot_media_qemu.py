"""Real UEFI boots (QEMU TCG) of boot.iso: x86_64 under OVMF, aarch64 under AAVMF.

Each arch boots as a CD-ROM and as a read-only virtio disk and must reach the initramfs
/init marker with the baked command line. The multi-arch ISO covers both firmwares;
one single-arch ISO per arch checks the plain case. Six boots in all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from tests.qemu_boot import MARKER, boot, build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def multi_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("multi") / "boot.iso", [Arch.X86_64, Arch.AARCH64],
                 cmdline="console={console} cloudboot.test=multi").output  # fmt: skip


def _check(log: str, arch: Arch, tag: str) -> None:
    assert f"{MARKER} arch={arch.value} modules=" in log, log[-3000:]
    assert f"cloudboot.test={tag}" in log.split(MARKER, 1)[1], log[-2000:]
    # The count's digits only: a kernel line can follow on the same console line ("19[").
    found = re.search(rf"{MARKER} arch={arch.value} modules=(\d+)", log)
    assert found is not None, log[-3000:]
    loaded = int(found.group(1))
    assert loaded >= 5  # the recipe's modules and their dependencies load


@pytest.mark.parametrize("arch", list(Arch))
@pytest.mark.parametrize("cdrom", [True, False], ids=["cdrom", "virtio-disk"])
def test_multi_arch_iso_boots(multi_iso: Path, arch: Arch, cdrom: bool, tmp_path: Path) -> None:
    _check(boot(arch, multi_iso, tmp_path, cdrom=cdrom), arch, "multi")


@pytest.mark.parametrize(("arch", "cdrom"), [(Arch.X86_64, True), (Arch.AARCH64, False)])
def test_single_arch_iso_boots(arch: Arch, cdrom: bool, tmp_path: Path) -> None:
    iso = build(tmp_path / "boot.iso", [arch], cmdline="console={console} cloudboot.test=single")
    _check(boot(arch, iso.output, tmp_path, cdrom=cdrom), arch, "single")
