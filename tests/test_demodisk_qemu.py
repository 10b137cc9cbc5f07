"""The demo target stops like a real distro: it powers off when the VM's power button is
pressed, which is how `cloudboot vm down` / a watcher restart ask a guest to stop.

Booted for real in QEMU (OVMF, TCG); the button press goes through QMP as the QEMU
backend sends it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from publisher.demodisk import TARGET_MARKER
from publisher.run import spawn
from tests.qemu_boot import FIRMWARE, demo_target_iso, qemu_argv
from watcher.vm.qmp import QmpClient

pytestmark = pytest.mark.slow


def test_demo_target_powers_off_on_the_power_button(tmp_path: Path) -> None:
    # console=hvc0 as the demo plan has it: QEMU has no virtio console, the target must not
    # wait for one (publisher/demodisk.py) and still comes up on ttyS0
    iso = demo_target_iso(tmp_path, "console=ttyS0 console=hvc0 cloudboot.demo=button")
    vars_copy = tmp_path / "vars.fd"
    shutil.copyfile(FIRMWARE[Arch.X86_64][1], vars_copy)
    serial = tmp_path / "serial.log"
    qmp = tmp_path / "qmp.sock"
    argv = [*qemu_argv(Arch.X86_64, iso, vars_copy, cdrom=True),
            "-qmp", f"unix:{qmp},server=on,wait=off"]  # fmt: skip
    with spawn(argv, stdout=serial, grace=1) as proc:
        deadline = time.monotonic() + 180
        while f"{TARGET_MARKER} target=button" not in serial.read_text(errors="replace"):
            assert proc.poll() is None, serial.read_text(errors="replace")
            assert time.monotonic() < deadline, "the demo target never came up"
            time.sleep(0.2)
        # the drivers load after the marker: press until the guest has a listener
        while proc.poll() is None and time.monotonic() < deadline:
            with QmpClient(qmp) as client:
                client.execute("system_powerdown")
            time.sleep(1.0)
        log = serial.read_text(errors="replace")
        assert proc.poll() is not None, f"the target ignored the power button:\n{log[-2000:]}"
        assert "power button: power off" in log
