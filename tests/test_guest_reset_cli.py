"""`cloudboot vm reset-nvram --menu` on a stopped QEMU VM's vars file, as a user runs it.

The vars file is OVMF's template with boot entries written by virt-firmware (an
independent implementation of the edk2 store): OVMF's own Boot0000, the guest's
``cloud-boot`` Boot0001 first in BootOrder, and an unrelated variable. After the command
only Boot0001 and its BootOrder slot are gone; every other variable reads back the same
through virt-firmware, and a second run changes no byte.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import time
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


def _waiting_for_a_lock(pid: int) -> bool:
    """``pid`` is blocked in flock: /proc/locks lists a blocked waiter as
    ``N: -> FLOCK ADVISORY WRITE <pid> ...``."""
    waiters = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return any(f[1:2] == ["->"] and f[5:6] == [str(pid)] for f in waiters)


def test_menu_reset_waits_for_the_vm_lock(tmp_path: Path) -> None:
    """Like every VM operation, the edit runs under the backend's lock: while a `vm up` or
    the watcher's restart holds it, the vars file is not touched."""
    vars_fd = _workspace(tmp_path)
    image = vars_fd.read_bytes()
    with open(tmp_path / "vm" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([CLOUDBOOT, "-C", tmp_path, "vm", "reset-nvram", "--menu"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        while not _waiting_for_a_lock(proc.pid):
            assert proc.poll() is None, "reset-nvram --menu finished without the VM lock"
            time.sleep(0.05)
        assert vars_fd.read_bytes() == image
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "Boot0001 removed" in stdout.decode()
    assert "Boot0001" not in _variables(vars_fd)
