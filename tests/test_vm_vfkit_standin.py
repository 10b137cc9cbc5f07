"""The vfkit stand-in keeps vfkit's contract, so backend tests through it mean something.

Command-line errors are vfkit's (mac=auto rejected, a missing store without ``create``);
``create`` overwrites a store; the REST API answers with vfkit's JSON shapes and status
codes (200 state, 202 changes, 400 bad JSON, 500 unknown change) and the process exits
when the VM stops.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path

import pytest
from virt.firmware.varstore.edk2 import Edk2VarStore

from publisher.config import Backend
from publisher.run import run, spawn
from tests.helpers import STANDIN, has_marker, make_spec, set_marker, wait_for
from watcher.vm.firmware import find_firmware
from watcher.vm.spec import VmSpec
from watcher.vm.state import read_pidfile
from watcher.vm.vfkit import VfkitRest, _UnixHTTPConnection, vfkit_argv


def standin_spec(root: Path) -> VmSpec:
    """The lifecycle tests' VM on the vfkit backend, its state dir already there (the
    stand-in is started by hand here, not through the backend that would create it)."""
    spec = make_spec(root, Backend.VFKIT)
    spec.state_dir.mkdir(exist_ok=True)
    return spec


def test_missing_store_without_create_fails_like_vfkit(tmp_path: Path) -> None:
    argv = vfkit_argv(standin_spec(tmp_path), create_nvram=False, binary=str(STANDIN))
    proc = run(argv, check=False)
    assert proc.returncode == 1
    assert f"bootloader: file not found: {tmp_path}/vm/nvram.fd" in proc.stderr.decode()


def test_mac_auto_is_rejected_like_vfkit_0_6(tmp_path: Path) -> None:
    spec = standin_spec(tmp_path)
    argv = vfkit_argv(spec, create_nvram=True, binary=str(STANDIN))
    argv[argv.index(f"virtio-net,nat,mac={spec.mac}")] = "virtio-net,nat,mac=auto"
    proc = run(argv, check=False)
    assert proc.returncode == 1 and "invalid MAC address: auto" in proc.stderr.decode()
    assert not (tmp_path / "vm/nvram.fd").exists(), "nothing may be created on a bad command"


def raw_post(sock: Path, body: bytes) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(sock, 5.0)
    try:
        conn.request("POST", "/vm/state", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_rest_api_shapes_create_overwrites_and_exit_on_stop(tmp_path: Path) -> None:
    spec = standin_spec(tmp_path)
    template = find_firmware(spec.arch).vars_template
    spec.nvram.write_bytes(template.read_bytes())
    set_marker(spec.nvram)  # an old store that `create` must replace
    argv = vfkit_argv(spec, create_nvram=True, binary=str(STANDIN))
    rest = VfkitRest(spec.control_socket)
    with spawn(argv) as proc:
        wait_for(lambda: read_pidfile(spec.pidfile) == proc.pid, 20, "the pidfile")
        wait_for(spec.control_socket.exists, 20, "the REST socket")
        assert not has_marker(spec.nvram)
        assert Edk2VarStore(str(spec.nvram)).get_varlist() is not None

        state = rest.state()
        assert state == {
            "state": "VirtualMachineStateRunning",
            "canStart": False,
            "canPause": True,
            "canResume": False,
            "canStop": True,
            "canHardStop": True,
        }
        inspect = rest.inspect()
        assert inspect["cpus"] == 1 and inspect["memory"] == 256
        assert [b["readOnly"] for b in inspect["devices"]["blk"]] == [True, False]

        assert raw_post(spec.control_socket, b"{not json")[0] == 400
        status, body = raw_post(spec.control_socket, json.dumps({"state": "Reboot"}).encode())
        assert status == 500 and "invalid new VMState: Reboot" in json.loads(body)["error"]

        assert raw_post(spec.control_socket, b'{"state":"Pause"}') == (202, b"")
        assert rest.state()["state"] == "VirtualMachineStatePaused"
        assert rest.state()["canResume"] is True
        rest.change_state("Resume")
        assert rest.state()["state"] == "VirtualMachineStateRunning"

        with contextlib.suppress(ConnectionError, http.client.HTTPException):
            rest.change_state("HardStop")  # vfkit's HardStop reply races its exit
        wait_for(lambda: proc.poll() is not None, what="vfkit to exit")
        assert proc.returncode == 0, "vfkit exits when its VM stops"
        assert not spec.control_socket.exists()
