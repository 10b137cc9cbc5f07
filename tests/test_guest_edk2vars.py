"""Our edk2 vars-file editor against a real OVMF_VARS_4M.fd and virt-firmware's reader."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from virt.firmware.efi import bootentry as vf_bootentry, devpath as vf_devpath
from virt.firmware.varstore.edk2 import Edk2VarStore

from guest.contract.efi import CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.devpath import HardDrive
from guest.contract.efi.edk2vars import _AUTH_VAR, VarsFile
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption, cloudboot_entry
from guest.contract.efi.varstore import (
    Variable,
    VariableStore,
    forget_staged_target,
    stage_boot_entry,
)
from guest.contract.errors import CloudbootError
from watcher.vm.nvram import forget_staged_target_in as reset_vars_file, restore_template

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
PART = HardDrive(1, 2048, 100000, uuid.UUID("0f3a4c1e-8a27-4b6c-9d2e-5a7b1c3d9e01"))

pytestmark = pytest.mark.skipif(not OVMF_VARS.exists(), reason="ovmf not installed")


def _vf_vars(path: Path) -> dict[str, bytes]:
    return {name: bytes(var.data) for name, var in Edk2VarStore(str(path)).get_varlist().items()}


def _with_their_entries(tmp_path: Path) -> Path:
    """A vars file as firmware would leave it: Boot0000 (a disk), Boot0001 (ours), BootOrder."""
    path = tmp_path / "vars.fd"
    shutil.copy(OVMF_VARS, path)
    store = Edk2VarStore(str(path))
    varlist = store.get_varlist()
    varlist.set_boot_entry(0, "UEFI Misc Device", vf_devpath.DevicePath.filepath(r"\EFI\x.efi"))
    ours = cloudboot_entry("t", PART, "console=ttyS0")
    var = varlist.create("Boot0001")
    var.attr = 7
    var.data = bytes(ours)
    varlist.create("BootOrder").set_boot_order([1, 0])
    varlist["BootOrder"].attr = 7
    store.write_varstore(str(path), varlist)
    return path


def test_pristine_template_parses_and_rewrites_byte_identical() -> None:
    image = OVMF_VARS.read_bytes()
    vars_file = VarsFile.from_bytes(image)
    assert vars_file.authenticated
    assert bytes(vars_file) == image


def test_we_read_what_virt_firmware_wrote(tmp_path: Path) -> None:
    path = _with_their_entries(tmp_path)
    vars_file = VarsFile.from_bytes(path.read_bytes())
    boot1 = vars_file.read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot1 is not None
    assert LoadOption.from_bytes(boot1.data).description == "cloud-boot t"
    order = vars_file.read("BootOrder", GLOBAL_VARIABLE_GUID)
    assert order is not None and bootorder.parse(order.data) == [1, 0]
    assert bytes(vars_file) == bytes(VarsFile.from_bytes(bytes(vars_file)))


def test_virt_firmware_reads_what_we_wrote(tmp_path: Path) -> None:
    vars_file = VarsFile.from_bytes(OVMF_VARS.read_bytes())
    vars_file.write("Boot0001", GLOBAL_VARIABLE_GUID, 7, bytes(cloudboot_entry("web", PART, "q")))
    vars_file.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, bootorder.serialise([1]))
    path = tmp_path / "ours.fd"
    path.write_bytes(bytes(vars_file))
    theirs = _vf_vars(path)
    assert str(vf_bootentry.BootEntry(data=theirs["Boot0001"]).title) == "cloud-boot web"
    assert theirs["BootOrder"] == b"\x01\x00"


def test_host_reset_removes_boot0001_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _with_their_entries(tmp_path)
    assert reset_vars_file(path)
    theirs = _vf_vars(path)
    assert "Boot0001" not in theirs
    assert "Boot0000" in theirs
    assert theirs["BootOrder"] == b"\x00\x00"
    assert len(path.read_bytes()) == OVMF_VARS.stat().st_size
    before = path.read_bytes()
    assert not reset_vars_file(path)  # idempotent: nothing to do, file untouched
    assert path.read_bytes() == before


def test_host_reset_of_blank_aavmf_flash_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "blank.fd"
    path.write_bytes(bytes(1 << 16))
    assert not reset_vars_file(path)


def test_full_replace_restores_the_template(tmp_path: Path) -> None:
    path = _with_their_entries(tmp_path)
    restore_template(path, OVMF_VARS)
    assert path.read_bytes() == OVMF_VARS.read_bytes()


def test_garbage_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.fd"
    path.write_bytes(b"\x01" * 4096)
    with pytest.raises(CloudbootError, match=r"junk.fd: edk2 vars@0x28"):
        reset_vars_file(path)


def _with_dead_boot0001(tmp_path: Path) -> Path:
    """A vars file whose log holds Boot0001 only as a deleted entry (state 0x3D), as the
    firmware leaves it after a SetVariable delete and before it reclaims space."""
    vars_file = VarsFile.from_bytes(OVMF_VARS.read_bytes())
    vars_file.write("Boot0001", GLOBAL_VARIABLE_GUID, 7, bytes(cloudboot_entry("t", PART, "")))
    vars_file.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, bootorder.serialise([0]))
    image = bytearray(bytes(vars_file))
    header = image.index("Boot0001".encode("utf-16-le")) - _AUTH_VAR.size
    assert image[header : header + 3] == b"\xaa\x55\x3f"  # StartId, State ADDED
    image[header + 2] = 0x3D  # ADDED & DELETED
    path = tmp_path / "dead.fd"
    path.write_bytes(bytes(image))
    return path


def test_delete_of_a_dead_entry_deletes_nothing(tmp_path: Path) -> None:
    path = _with_dead_boot0001(tmp_path)
    vars_file = VarsFile.from_bytes(path.read_bytes())
    assert any(v.name == "Boot0001" and not v.live for v in vars_file.variables)
    assert vars_file.read("Boot0001", GLOBAL_VARIABLE_GUID) is None
    assert not vars_file.delete("Boot0001", GLOBAL_VARIABLE_GUID)
    assert vars_file.delete("BootOrder", GLOBAL_VARIABLE_GUID)  # a live one is deleted
    assert not vars_file.delete("BootOrder", GLOBAL_VARIABLE_GUID)
    before = path.read_bytes()
    assert not reset_vars_file(path)  # so `vm reset-nvram --menu` says "nothing to do"
    assert path.read_bytes() == before
    assert "Boot0001" not in _vf_vars(path)  # virt-firmware agrees it is not there


@pytest.mark.parametrize("kind", ["efivarfs", "edk2"])
def test_both_stores_stage_and_forget_alike(tmp_path: Path, kind: str) -> None:
    """One variable model, two stores: the same edits give the same variables."""
    store: VariableStore
    if kind == "efivarfs":
        store = EfiVarStore(tmp_path)
    else:
        store = VarsFile.from_bytes(OVMF_VARS.read_bytes())
    other = ("Boot0003", GLOBAL_VARIABLE_GUID)
    store.write(*other, 7, b"theirs")
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, bootorder.serialise([3]))
    entry = bytes(cloudboot_entry("t", PART, "console=ttyS0"))
    assert stage_boot_entry(store, entry)
    assert not stage_boot_entry(store, entry)  # BootOrder already right: not rewritten
    assert store.read(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID) == Variable(7, entry)
    order = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    assert order is not None and bootorder.parse(order.data) == [1, 3]
    assert forget_staged_target(store)
    assert not forget_staged_target(store)
    assert store.read(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID) is None
    assert store.read("BootOrder", GLOBAL_VARIABLE_GUID) == Variable(7, b"\x03\x00")
    assert store.read(*other) == Variable(7, b"theirs")
