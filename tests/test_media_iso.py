"""boot.iso checked with xorriso, sgdisk, mtools and fsck.vfat; the ESP sizing rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.gpt import ESP_TYPE, SECTOR, read_gpt
from publisher.media.esp import MIB, esp_size
from publisher.media.iso import ISO_ESP_NAME, read_boot_entry
from publisher.run import run
from tests.qemu_boot import build


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("isos")
    out = {}
    for name, arches in (("x86_64", [Arch.X86_64]), ("multi", [Arch.X86_64, Arch.AARCH64])):
        out[name] = build(root / name / "boot.iso", arches).output
    return out


def test_esp_size_rule() -> None:
    assert esp_size([15 * MIB]) == 32 * MIB  # 22.5 + 8 = 30.5 -> 32
    assert esp_size([15 * MIB, 28 * MIB]) == 80 * MIB  # 64.5 + 8 = 72.5 -> 80
    assert esp_size([0]) == 16 * MIB


def _esp(iso: Path, tmp_path: Path) -> tuple[Path, int, int]:
    data = iso.read_bytes()
    (esp,) = read_gpt(data[: 34 * SECTOR]).partitions
    part = tmp_path / "esp.img"
    part.write_bytes(data[esp.first_lba * SECTOR : (esp.last_lba + 1) * SECTOR])
    return part, esp.first_lba, esp.size_sectors


@pytest.mark.parametrize("name", ["x86_64", "multi"])
def test_iso_passes_the_independent_tools(isos: dict[str, Path], name: str, tmp_path: Path) -> None:
    iso = isos[name]
    data = iso.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    gpt = read_gpt(data[: 34 * SECTOR])
    (esp,) = gpt.partitions
    assert (esp.number, esp.type_guid, esp.name) == (2, ESP_TYPE, ISO_ESP_NAME)
    assert esp.first_lba * SECTOR % 2048 == 0

    verify = run(["sgdisk", "-v", iso]).stdout.decode()
    assert "No problems found" in verify, verify

    report = run(["xorriso", "-indev", iso, "-report_el_torito", "plain"]).stdout.decode()
    images = [line for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert len(images) == 1, report
    fields = images[0].split(":", 1)[1].split()
    # N Pltf B Emul Ld_seg Hdpt Ldsiz LBA
    assert fields[1:4] == ["UEFI", "y", "none"], images
    assert int(fields[7]) * 4 == esp.first_lba  # the entry points at the ESP
    assert int(fields[6]) == min(esp.size_sectors, 65535)  # ... and covers it
    entry = read_boot_entry(data)
    assert entry.platform == 0xEF and entry.bootable and entry.media == 0

    part, _, _ = _esp(iso, tmp_path)
    fsck = run(["fsck.vfat", "-n", part]).stdout.decode()
    assert "files" in fsck and "rror" not in fsck, fsck
    listing = run(["mdir", "-b", "-i", part, "::/EFI/BOOT"]).stdout.decode()
    expected = {"BOOTX64.EFI"} | ({"BOOTAA64.EFI"} if name == "multi" else set())
    assert {Path(line).name for line in listing.split()} == expected
    uki_sizes = [int(s) for s in run(["mdir", "-i", part, "::/EFI/BOOT"]).stdout.decode().split()
                 if s.isdigit() and int(s) > 1_000_000]  # fmt: skip
    assert esp.size_sectors * SECTOR == esp_size(uki_sizes)


def test_uki_in_the_esp_is_the_uki_we_built(isos: dict[str, Path], tmp_path: Path) -> None:
    part, _, _ = _esp(isos["x86_64"], tmp_path)
    out = tmp_path / "BOOTX64.EFI"
    run(["mcopy", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", out])
    assert out.read_bytes()[:2] == b"MZ"
    assert b".linux" in out.read_bytes()[:4096]
