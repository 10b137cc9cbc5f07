"""kernel/ edit -> new boot.iso -> VM restarted with a reset NVRAM (real QEMU/OVMF, TCG).

The real `cloudboot watch` process runs the real media builder on the repository's
recipe (busybox-marker init: it prints /proc/cmdline and powers off) and the real QEMU
backend. What the user would notice is asserted: boot.iso changes, the guest boots with
the edited command line, and a variable planted in the NVRAM store is gone after the
watcher's restart (virt-firmware reads the store).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from virt.firmware.varstore.edk2 import Edk2VarStore

from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from tests.helpers import REPO, wait_for, write_signed_workspace
from tests.qemu_boot import recipe_text
from watcher.vm import VmSpec, VmState, open_backend

CLOUDBOOT = Path(sys.executable).parent / "cloudboot"
MARKER = "CloudbootWatchMarker"


def status(root: Path) -> dict[str, object]:
    path = root / ".cloudboot" / "status.json"
    data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_kernel_edit_rebuilds_iso_and_restarts_vm_with_clean_nvram(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.skip("OVMF not installed (Debian package: ovmf)")
    root = tmp_path / "ws"
    write_signed_workspace(root, registry.address)
    shutil.rmtree(root / "kernel")
    shutil.copytree(REPO / "kernel", root / "kernel")
    (root / "kernel" / "recipe.toml").write_text(recipe_text("busybox-marker"))
    with (root / "cloudboot.toml").open("a") as f:
        f.write('[build]\narches = ["x86_64"]\n[vm]\narch = "x86_64"\ncpus = 1\n')
        f.write('memory_mib = 512\naccel = "tcg"\n')
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    subprocess.run([CLOUDBOOT, "--workspace", root, "cache-disk"], check=True, env=env)
    config = load_config(root)
    vm = open_backend(VmSpec.from_config(config))
    log = (tmp_path / "watch.log").open("wb")
    proc = subprocess.Popen(
        [CLOUDBOOT, "--log-format", "json", "--workspace", root, "watch"],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: status(root).get("runs") == 1, 240, "initial build and VM start")
        iso = config.build.iso
        first_iso = sha(iso)
        serial = config.vm.state_dir / "serial.log"
        wait_for(lambda: "CLOUDBOOT-INIT-OK" in serial.read_text(errors="replace"), 90, "boot")
        wait_for(lambda: vm.status().state is not VmState.RUNNING, 60, "guest power-off")
        store = config.vm.state_dir / "nvram.fd"
        varstore = Edk2VarStore(str(store))
        varlist = varstore.get_varlist()
        varlist.set_uint32(MARKER, 0xC10B)  # as a staged Boot0001 would persist
        varstore.write_varstore(str(store), varlist)
        assert MARKER in Edk2VarStore(str(store)).get_varlist()

        recipe = root / "kernel" / "recipe.toml"
        recipe.write_text(
            recipe.read_text().replace("console={console}", "console={console} cbwatch=2")
        )
        wait_for(lambda: status(root).get("runs") == 2, 240, "rebuild and restart")
        stages = status(root)["stages"]
        assert isinstance(stages, dict)
        assert stages["kernel"]["result"] == "ok" and stages["kernel"]["detail"]["changed"]
        assert stages["vm"]["result"] == "ok" and stages["vm"]["detail"]["nvram"] == "reset"
        assert sha(iso) != first_iso
        assert MARKER not in Edk2VarStore(str(store)).get_varlist()
        wait_for(lambda: "cbwatch=2" in serial.read_text(errors="replace"), 90, "new cmdline")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            vm.down()
    assert vm.status().state is not VmState.RUNNING  # the watcher started it, and stopped it
