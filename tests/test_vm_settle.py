"""The settled NVRAM a QEMU restart restores (watcher/vm/settle.py), checked with
virt-firmware as the independent reader, and once under real OVMF: the first launch
keeps the store as the firmware left it at the kernel's banner (its Boot0001 the
firmware's own ISO entry), the loop's next reset restores that copy and boots the ISO
from it; another command line gets the template; `vm reset-nvram` drops the copies."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from virt.firmware.efi import devpath as vf_devpath
from virt.firmware.varstore.edk2 import Edk2VarStore

from guest.contract.arch import Arch
from guest.contract.efi import bootorder
from guest.contract.efi.edk2vars import VarsFile
from guest.contract.efi.loadoption import EDK2_AUTO_CREATED
from guest.contract.errors import CloudbootError
from publisher.config import Backend
from publisher.media.build import build_boot_iso
from tests.helpers import STOP_TIMEOUT, has_marker, make_spec, set_marker, wait_for
from tests.qemu_boot import MARKER, repo_recipe
from tests.test_guest_edk2vars import OVMF_VARS, _vf_vars, _with_their_entries
from watcher.vm import open_backend
from watcher.vm.firmware import Firmware, find_firmware
from watcher.vm.nvram import describe, settled_copies, settled_path
from watcher.vm.settle import HD_PATH_CACHE, restore, settle_key, settled_image

pytestmark = pytest.mark.skipif(not OVMF_VARS.exists(), reason="ovmf not installed")


def test_a_copy_that_names_a_staged_target_is_refused(tmp_path: Path) -> None:
    """A capture that came after the agent wrote its Boot0001 is not kept; in one whose
    Boot0001 is the firmware's own device entry, that entry moves to a free number."""
    staged = _with_their_entries(tmp_path)  # Boot0001 is ours: a staged target
    with pytest.raises(CloudbootError, match="already a staged target"):
        settled_image(staged.read_bytes())
    settled = tmp_path / "settled.fd"
    shutil.copy(OVMF_VARS, settled)
    store = Edk2VarStore(str(settled))
    varlist = store.get_varlist()
    iso = vf_devpath.DevicePath.filepath(r"\EFI\BOOT\BOOTX64.EFI")
    varlist.set_boot_entry(0, "UiApp", iso)
    varlist.set_boot_entry(1, "UEFI Misc Device", iso, optdata=EDK2_AUTO_CREATED)
    varlist.set_boot_entry(2, "UEFI Misc Device 2", iso, optdata=EDK2_AUTO_CREATED)
    varlist.create("BootOrder").set_boot_order([0, 1, 2])
    store.write_varstore(str(settled), varlist)
    before = _vf_vars(settled)
    settled.write_bytes(settled_image(settled.read_bytes()))
    after = _vf_vars(settled)
    assert "Boot0001" not in after and after["Boot0003"] == before["Boot0001"]
    assert bootorder.parse(after["BootOrder"]) == [0, 3, 2]
    assert (after["Boot0000"], after["Boot0002"]) == (before["Boot0000"], before["Boot0002"])
    assert settled_image(settled.read_bytes()) == settled.read_bytes()  # nothing to move


def test_the_key_follows_firmware_template_and_argv(tmp_path: Path) -> None:
    code = tmp_path / "code.fd"
    code.write_bytes(b"code")
    template = tmp_path / "vars.fd"
    shutil.copy(OVMF_VARS, template)
    firmware = Firmware(code, template)
    key = settle_key(firmware, ["qemu", "-m", "512"])
    assert key == settle_key(firmware, ["qemu", "-m", "512"])
    assert key != settle_key(firmware, ["qemu", "-m", "640"])
    code.write_bytes(b"other code")
    assert key != settle_key(firmware, ["qemu", "-m", "512"])


def test_restore_takes_the_copy_for_its_key_else_the_template(tmp_path: Path) -> None:
    firmware = Firmware(tmp_path / "code.fd", OVMF_VARS)
    store = tmp_path / "nvram.fd"
    settled_path(store, "other").write_bytes(b"settled for another command line")
    assert restore(store, firmware, "mine") is False
    assert store.read_bytes() == OVMF_VARS.read_bytes()
    assert describe(store, OVMF_VARS).pristine is True
    settled_path(store, "mine").write_bytes(b"settled")
    assert restore(store, firmware, "mine") is True
    assert store.read_bytes() == b"settled"
    info = describe(store, OVMF_VARS)  # what `vm status` says
    assert info.settled and not info.pristine and info.to_json()["settled"] is True


@pytest.mark.parametrize(("attributes", "carried"), [(0x3, True), (0x7, False)])
def test_the_firmwares_path_cache_is_carried_onto_the_copy(
    tmp_path: Path, attributes: int, carried: bool
) -> None:
    """edk2's HD() path cache (HDDP) from the old store goes onto the settled copy, but
    only as NV|BS: with runtime access an OS could have written it."""
    firmware = Firmware(tmp_path / "code.fd", OVMF_VARS)
    store, settled = tmp_path / "nvram.fd", settled_path(tmp_path / "nvram.fd", "k")
    shutil.copy(OVMF_VARS, settled)
    old = VarsFile.from_bytes(OVMF_VARS.read_bytes())
    old.write(*HD_PATH_CACHE, attributes, b"front path")
    store.write_bytes(bytes(old))
    assert restore(store, firmware, "k") is True
    cache = VarsFile.from_bytes(store.read_bytes()).read(*HD_PATH_CACHE)
    if carried:
        assert cache is not None and (cache.attributes, cache.data) == (0x3, b"front path")
        assert _vf_vars(store)["HDDP"] == b"front path"  # virt-firmware reads it back
    else:
        assert cache is None and store.read_bytes() == settled.read_bytes()


@pytest.mark.slow
def test_restart_restores_what_the_firmware_settled(tmp_path: Path) -> None:
    iso = tmp_path / "marker.iso"
    build_boot_iso(repo_recipe(), iso, [Arch.X86_64])
    spec = dataclasses.replace(make_spec(tmp_path, Backend.QEMU), iso=iso, memory_mib=512)
    template = find_firmware(spec.arch).vars_template
    backend = open_backend(spec)

    def copies() -> list[Path]:
        return settled_copies(spec.nvram)

    def booted_since(mark: int) -> bool:
        return MARKER in spec.serial_log.read_bytes()[mark:].decode(errors="replace")

    try:
        # first launch: the template, and a copy once the kernel's banner is on the console
        backend.up(reset_nvram=True)
        wait_for(lambda: bool(copies()), 300, "a settled copy of the store")
        settled = copies()[0]
        theirs = _vf_vars(settled)
        assert settled.read_bytes() != template.read_bytes()
        # the firmware's ISO entry, moved off Boot0001, still in BootOrder
        assert "Boot0001" not in theirs
        moved = [n for n in bootorder.parse(theirs["BootOrder"])
                 if theirs[f"Boot{n:04X}"].endswith(EDK2_AUTO_CREATED)]  # fmt: skip
        assert moved and "UEFI Misc Device" in theirs[f"Boot{moved[0]:04X}"].decode("utf-16-le")
        wait_for(lambda: booted_since(0), 300, MARKER)

        # the loop's restart restores that copy (marked here to tell it from the template)
        set_marker(settled)
        backend.restart(True, stop_timeout=STOP_TIMEOUT)
        assert has_marker(spec.nvram)
        mark = spec.serial_log.stat().st_size
        wait_for(lambda: booted_since(mark), 300, f"{MARKER} from the settled store")
        assert copies() == [settled]
        # the firmware found its boot entries as it left them: nothing re-created
        entries = {k: v for k, v in _vf_vars(spec.nvram).items() if k.startswith("Boot")}
        assert entries == {k: v for k, v in theirs.items() if k.startswith("Boot")}
        backend.down(STOP_TIMEOUT)

        # another command line (more memory): no copy for it, so the template, and a new one
        other = open_backend(dataclasses.replace(spec, memory_mib=640))
        backend = other
        other.up(reset_nvram=True)
        assert not has_marker(spec.nvram)
        # the capture writes the new copy, then removes the old: wait for both steps (the
        # two names hash paths under tmp_path, so they sort either way round)
        wait_for(lambda: copies() and settled not in copies(), 300, "a copy for the new argv")
        (fresh,) = copies()
        assert not has_marker(fresh)
        assert "BootOrder" in _vf_vars(fresh) and "Boot0001" not in _vf_vars(fresh)
        other.down(STOP_TIMEOUT)
        other.reset_nvram()  # `vm reset-nvram`: the template itself, and no copy left
        assert copies() == [] and spec.nvram.read_bytes() == template.read_bytes()
    finally:
        backend.down(STOP_TIMEOUT)
