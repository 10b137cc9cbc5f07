"""The live-reload loop, end to end, as the README's first command runs it.

`cloudboot up` in a fresh workspace: embedded registry, signed plan, boot.iso with the guest
agent, cache disk, demo target disk, QEMU (OVMF, TCG). Then, as a user would:
1. the guest stages the plan's default target and the firmware boots it (marker alpha);
2. edit default_target to beta -> signed, published, VM restarted with a cleared NVRAM ->
   marker beta;
3. a broken plan edit -> an error naming file:line:col, nothing published, no restart, the
   VM keeps running beta; `cloudboot vm restart --reset-nvram` from a second terminal
   (what the quiet-console notice suggests) boots beta again: the same VM `up` boots,
   its demo target disk and its firmware's settled store included;
4. a kernel/ cmdline edit -> a new boot.iso, restart, the new cmdline in the guest log;
5. a valid plan edit whose target cannot boot (no init, no root its kernel can mount) ->
   `up` reports the target's kernel panic and its hint as soon as it happens, and keeps
   running.
Ctrl-C then stops the watcher, the VM and the registry.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import CLOUDBOOT, TARGET_UP, LiveLoop
from watcher.watch.reload import STAGES as RELOAD_STAGES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists(), reason="ovmf not installed"
    ),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "arch",
    [
        "x86_64",
        pytest.param(
            "aarch64",
            marks=[
                pytest.mark.aarch64,
                pytest.mark.skipif(
                    not Path("/usr/share/AAVMF/AAVMF_CODE.fd").exists(),
                    reason="qemu-efi-aarch64 not installed",
                ),
            ],
        ),
    ],
)
def test_edit_plan_and_kernel_live(tmp_path: Path, arch: str) -> None:
    with LiveLoop(tmp_path / "ws", arch=arch) as loop:
        # 1. First boot: bootstrap UKI -> agent -> target alpha.
        loop.serial.wait_for(rf"{TARGET_UP} target=alpha", alive=loop.alive)
        first = loop.serial.text()
        assert "plan signature verified" in first
        assert "Boot0001 = cloud-boot alpha" in first

        # 2. Edit the default target: a new signed plan and a restart with a fresh NVRAM.
        mark, events, pid = loop.serial.mark(), len(loop.log_events()), loop.vm_pid()
        edited = loop.edit(loop.plan, 'default_target = "alpha"', 'default_target = "beta"')
        _, seen_beta = loop.serial.wait_for(
            rf"{TARGET_UP} target=beta", since=mark, timeout=240, alive=loop.alive
        )
        after = loop.serial.text(mark)
        assert "plan signature verified" in after and "Boot0001 = cloud-boot beta" in after
        assert "target=alpha" not in after
        restart = loop.wait_event(
            lambda e: e.get("event") == "vm started" and e.get("reset") is True, after=events
        )
        assert restart["pid"] != pid
        # from the store the firmware settled on the first boot, with the firmware's HD()
        # path cache from the target's pass (watcher/vm/settle.py)
        reset = loop.wait_event(lambda e: e.get("event") == "nvram reset", after=events)
        assert reset["settled"] is True and reset["path_cache"] is True, reset
        print(f"edit -> target beta running: {seen_beta - edited:.1f} s")
        # `up` says so itself: one result, the same stage split as the bench.
        result = loop.wait_event(lambda e: e.get("event") == "reload" and e.get("number") == 2,
                                 after=events)  # fmt: skip
        assert (result["outcome"], result["target"]) == ("up", "beta"), result
        assert list(result["stages"]) == list(RELOAD_STAGES)
        assert abs(sum(result["stages"].values()) - result["since_edit_s"]) < 0.05
        # The outside view is the longer one: it starts before the write (the watcher's at
        # the file event) and ends at this test's 0.1 s poll of the log (the watcher's at
        # its own line clock). On a loaded 2-core runner that poll lagged 1.1 s once (an
        # aarch64 boot beside another worker), so the bound is one-sided and allows that;
        # a result measured from the wrong edit or the wrong line is off by seconds.
        lag = (seen_beta - edited) - result["since_edit_s"]
        assert -0.5 < lag < 2.5, (lag, result["since_edit_s"])
        assert result["publish_s"] > 0
        boot1 = next(e for e in loop.log_events() if e.get("event") == "reload")
        assert (boot1["number"], boot1["target"]) == (1, "alpha")  # `up`'s own first boot
        assert not any(e.get("event") == "published" for e in loop.log_events())  # said once

        # 3. A broken edit: error with file:line:col, no publish, no restart.
        status_before = json.loads((loop.root / ".cloudboot/status.json").read_text())
        digest_before = status_before["plans"]["default.hcl"]["digest"]
        mark, events, pid = loop.serial.mark(), len(loop.log_events()), loop.vm_pid()
        loop.edit(loop.plan, 'default_target = "beta"', 'default_target = "gamma"')
        failed = loop.wait_event(lambda e: e.get("event") == "plan stage failed", after=events)
        line = loop.plan.read_text().splitlines().index('default_target = "gamma"') + 1
        assert f'default.hcl:{line}:18: default_target "gamma" is not defined' in failed["error"]
        time.sleep(5)  # time a (wrong) restart would need to show on the console
        assert loop.vm_pid() == pid
        assert "cloud-boot:" not in loop.serial.text(mark)
        assert not any(e.get("event") == "vm stopping" for e in loop.log_events()[events:])
        status = json.loads((loop.root / ".cloudboot/status.json").read_text())
        assert status["plans"]["default.hcl"]["digest"] == digest_before
        assert "gamma" in status["plans"]["default.hcl"]["last_error"]
        mark, events = loop.serial.mark(), len(loop.log_events())
        restart = [CLOUDBOOT, "-C", str(loop.root), "vm", "restart", "--reset-nvram"]
        done = subprocess.run(restart, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        loop.serial.wait_for(rf"{TARGET_UP} target=beta", since=mark, timeout=240,
                             alive=loop.alive)  # fmt: skip
        assert "FATAL" not in loop.serial.text(mark)
        assert loop.alive() and loop.vm_pid() != pid

        # 4. A kernel/ edit: new boot.iso, restart, the new cmdline in the guest.
        iso_before = sha256(loop.iso)
        mark, events = loop.serial.mark(), len(loop.log_events())
        loop.edit(loop.recipe, "cloudboot.insecure=1 ", "cloudboot.insecure=1 e2e.kernel=edit-1 ")
        loop.serial.wait_for(
            r"[Cc]ommand line: .*e2e\.kernel=edit-1", since=mark, timeout=240, alive=loop.alive
        )
        # The registry still holds beta (the broken edit published nothing).
        loop.serial.wait_for(rf"{TARGET_UP} target=beta", since=mark, timeout=240)
        assert sha256(loop.iso) != iso_before
        # Its result line comes a moment after the marker: wait, so step 5 counts past it.
        result = loop.wait_event(lambda e: e.get("event") == "reload", after=events, timeout=60)
        assert (result["outcome"], result["target"], result["build_s"] > 0) == ("up", "beta", True)

        # 5. A target that panics: the result says so at once, not after the 600 s wait.
        events = len(loop.log_events())
        text = loop.plan.read_text()
        broken = text.replace('default_target = "gamma"', 'default_target = "alpha"', 1).replace(
            '"root=LABEL=cbtarget",', '"root=LABEL=cbtarget", "rdinit=/nonexistent",', 1
        )  # step 3's file still names gamma; alpha's cmdline is the first in the file
        edited = loop.edit(loop.plan, text, broken)
        result = loop.wait_event(lambda e: e.get("event") == "reload", after=events, timeout=300)
        assert result["outcome"] == "panic", result
        assert "Unable to mount root fs" in result["fatal"], result
        assert "target's kernel panicked" in result["hint"]
        assert result["since_edit_s"] < time.time() - edited + 1
        assert loop.alive()
        final_pid = loop.vm_pid()

    assert loop.exit_code == 0, loop.log_path.read_text()[-3000:]
    assert not loop.registry_up()
    assert not Path(f"/proc/{final_pid}").exists()  # the VM `up` started is gone
