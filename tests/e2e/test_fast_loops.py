"""The fast loops (README.md "The loop"): Linux/QEMU development conveniences, each run
end to end as a user would: `cloudboot up` in a fresh workspace, an edit, the new target.

The two-pass loop (the seed's Path C, the default) keeps its own test
(tests/e2e/test_live_reload.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.harness import TARGET_UP, LiveLoop
from watcher.watch.reload import HOST_STAGES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists(), reason="ovmf not installed"
    ),
]
WAIT = 900.0  # a loaded TCG machine; speed is bench/'s business


def test_kexec_loop_reaches_the_new_target_with_one_firmware_pass(tmp_path: Path) -> None:
    """``[watch] loop = "kexec"``: boot.iso carries cloudboot.exit=kexec,reboot; the agent
    stages, then kexecs the target's kernel with its initrd and cmdline: the firmware
    runs once per reload (the bootstrap's pass), never for the target."""
    with LiveLoop(tmp_path / "ws", loop="kexec") as loop:
        loop.serial.wait_for(rf"{TARGET_UP} target=alpha", timeout=WAIT, alive=loop.alive)
        mark, events = loop.serial.mark(), len(loop.log_events())
        loop.edit(loop.plan, 'default_target = "alpha"', 'default_target = "beta"')
        match, _ = loop.serial.wait_for(rf"{TARGET_UP} target=beta.*", since=mark,
                                        timeout=WAIT, alive=loop.alive)  # fmt: skip
        after = loop.serial.text(mark)
        assert "cloudboot.exit=kexec,reboot" in after  # the bootstrap's baked cmdline
        assert "kexec: target loaded" in after and "kexec_core: Starting new kernel" in after
        assert "reboot: Restarting system" not in after
        assert len(re.findall(r"BdsDxe: starting Boot", after)) == 1  # the bootstrap only
        # The target's own cmdline came through kexec (no firmware's initrd= prefix), and
        # its initrd too: the marker is printed by the demo target's initrd.
        assert "cloudboot.demo=beta" in match.group(0) and "initrd=" not in match.group(0)
        result = loop.wait_event(lambda e: e.get("event") == "reload" and e.get("number") == 2,
                                 after=events)  # fmt: skip
        assert (result["outcome"], result["target"]) == ("up", "beta"), result
        assert abs(sum(result["stages"].values()) - result["since_edit_s"]) < 0.05
    assert loop.exit_code == 0, loop.log_path.read_text()[-3000:]


def test_host_loop_boots_straight_into_the_new_target(tmp_path: Path) -> None:
    """``[watch] loop = "host"``: on an edit the host stages the new default target into
    the stopped VM's cache disk and vars file; the VM boots it with no agent pass."""
    with LiveLoop(tmp_path / "ws", loop="host") as loop:
        loop.serial.wait_for(rf"{TARGET_UP} target=alpha", timeout=WAIT, alive=loop.alive)
        mark, events = loop.serial.mark(), len(loop.log_events())
        loop.edit(loop.plan, 'default_target = "alpha"', 'default_target = "beta"')
        loop.serial.wait_for(rf"{TARGET_UP} target=beta", since=mark, timeout=WAIT,
                             alive=loop.alive)  # fmt: skip
        after = loop.serial.text(mark)
        assert "cloud-boot:" not in after  # no agent pass: the host staged
        booted = re.findall(r'BdsDxe: starting Boot\S+ "([^"]+)"', after)
        assert booted == ["cloud-boot beta"]  # one firmware pass, straight into the target
        result = loop.wait_event(lambda e: e.get("event") == "reload" and e.get("number") == 2,
                                 after=events)  # fmt: skip
        assert (result["outcome"], result["target"]) == ("up", "beta"), result
        assert list(result["stages"]) == list(HOST_STAGES)
        assert abs(sum(result["stages"].values()) - result["since_edit_s"]) < 0.05
    assert loop.exit_code == 0, loop.log_path.read_text()[-3000:]
