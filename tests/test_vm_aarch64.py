"""The QEMU backend for an aarch64 guest on this x86_64 host: AAVMF on `-M virt` (TCG).

The firmware alone is enough to show the backend's aarch64 path works: it starts, AAVMF
initialises its blank variable store and prints its boot manager on the serial log,
status sees it, a reset gives back the template, and down stops it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from publisher.config import Backend
from tests.helpers import STOP_TIMEOUT, make_spec, wait_for
from watcher.vm import VmState, open_backend
from watcher.vm.firmware import find_firmware
from watcher.vm.state import process_cmdline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/AAVMF/AAVMF_CODE.fd").exists(), reason="qemu-efi-aarch64 missing"
    ),
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_aarch64_vm_boots_firmware_and_resets(tmp_path: Path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path, Backend.QEMU), arch=Arch.AARCH64)
    backend = open_backend(spec)
    template = find_firmware(Arch.AARCH64).vars_template
    try:
        status = backend.up(reset_nvram=True)
        assert status.state is VmState.RUNNING
        cmd = process_cmdline(status.pid or 0) or []
        assert cmd[0].endswith("qemu-system-aarch64") and "virt" in " ".join(cmd)
        # AAVMF reaches its boot manager: it found nothing bootable on our blank disks.
        wait_for(
            lambda: "BdsDxe" in spec.serial_log.read_text(errors="replace"), 90, "AAVMF output"
        )
        assert backend.down(STOP_TIMEOUT)
        assert backend.status().state is not VmState.RUNNING
        assert sha(spec.nvram) != sha(template)  # the firmware initialised its store
        backend.reset_nvram()
        assert sha(spec.nvram) == sha(template)
    finally:
        backend.down(STOP_TIMEOUT)
