"""`cloudboot vm reset-nvram --menu` on a stopped QEMU VM's vars file, as a user runs it.

The vars file is OVMF's template with boot entries written by virt-firmware (an
independent implementation of the edk2 store): OVMF's own Boot0000, the guest's
``cloud-boot`` Boot0001 first in BootOrder, and an unrelated variable. After the command
only Boot0001 and its BootOrder slot are gone; every other variable reads back the same
through virt-firmware, and a second run changes no byte.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from virt.firmware.efi import devpath
from virt.firmware.varstore.edk2 import Edk2VarStore

from publisher.run import run

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
CLOUDBOOT = Path(sys.executable).parent / "cloudboot"
pytestmark = pytest.mark.skipif(not OVMF_VARS.exists(), reason="ovmf not installed")


def _variables(path: Path) -> dict[str, bytes]:
    return {n: bytes(v.data) for n, v in Edk2VarStore(str(path)).get_varlist().items()}


def _workspace(root: Path) -> Path:
    (root / "cloudboot.toml").write_text(
        '[vm]\nbackend = "qemu"\naccel = "tcg"\nstate_dir = "vm"\nnvram = "vm/nvram.fd"\n'
    )
    (root / "vm").mkdir()
    vars_fd = root / "vm/nvram.fd"
    shutil.copy(OVMF_VARS, vars_fd)
    store = Edk2VarStore(str(vars_fd))
    varlist = store.get_varlist()
    varlist.set_boot_entry(0, "UEFI Misc Device", devpath.DevicePath.filepath("\\EFI\\BOOT\\X"))
    varlist.set_boot_entry(
        1,
        "cloud-boot debian",
        devpath.DevicePath.filepath("\\EFI\\Linux\\debian-vmlinuz.efi"),
        "initrd=\\EFI\\Linux\\debian-initrd console=ttyS0".encode("utf-16-le") + b"\0\0",
    )
    varlist.append_boot_order(1)
    varlist.append_boot_order(0)
    varlist.set_uint32("Timeout", 3)
    store.write_varstore(str(vars_fd), varlist)
    return vars_fd


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run([CLOUDBOOT, "-C", root, "--log-format", "json", "vm", *args], check=False)


def test_menu_reset_forgets_only_the_staged_target(tmp_path: Path) -> None:
    vars_fd = _workspace(tmp_path)
    before = _variables(vars_fd)
    assert before["BootOrder"] == b"\x01\x00\x00\x00"
    proc = _cli(tmp_path, "reset-nvram", "--menu")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "Boot0001 removed" in proc.stdout.decode()
    after = _variables(vars_fd)
    assert "Boot0001" not in after
    assert after["BootOrder"] == b"\x00\x00"
    unchanged = {k: v for k, v in before.items() if k not in ("Boot0001", "BootOrder")}
    assert {k: after[k] for k in unchanged} == unchanged
    assert vars_fd.stat().st_size == OVMF_VARS.stat().st_size
    # idempotent: nothing staged, nothing written
    image = vars_fd.read_bytes()
    proc = _cli(tmp_path, "reset-nvram", "--menu")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout.decode()
    assert vars_fd.read_bytes() == image


def test_menu_reset_of_a_damaged_store_names_the_file(tmp_path: Path) -> None:
    vars_fd = _workspace(tmp_path)
    image = bytearray(vars_fd.read_bytes())
    image[0x28:0x2C] = b"XXXX"  # the firmware volume signature "_FVH"
    vars_fd.write_bytes(bytes(image))
    proc = _cli(tmp_path, "reset-nvram", "--menu")
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.startswith("error: ") and str(vars_fd) in err
    assert vars_fd.read_bytes() == bytes(image)  # nothing half-written
