"""The vfkit stand-in keeps vfkit's contract, so backend tests through it mean something;
and the backend copes with what real vfkit does (docs/wire-formats.md §6).

Command-line errors are vfkit's (pflag's texts, ``mac=auto`` rejected by Go's ParseMAC,
a missing store without ``create``, exit 1); ``--flag=value`` parses; ``--version`` is
cobra's; a vfkit older than 0.6.2 has no ``--pidfile`` and the backend refuses it by
version. The REST API answers with vfkit's JSON shapes (state, inspect) and status codes;
its first state is Stopped and the backend's ``up`` returns only once it is Running; the
serial log is a virtio console truncated at each launch; a guest reboot resets the VM in
place; the process exits when the VM stops.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from pathlib import Path

import pytest
from virt.firmware.varstore.edk2 import Edk2VarStore

from publisher.config import Backend
from publisher.run import run, spawn
from tests.helpers import STANDIN, has_marker, make_spec, set_marker, wait_for
from watcher.vm import VmError, VmState, backend as backend_module, open_backend
from watcher.vm.firmware import find_firmware
from watcher.vm.qmp import QmpClient
from watcher.vm.spec import VmSpec
from watcher.vm.state import read_pidfile
from watcher.vm.supervisor import Action, Supervisor
from watcher.vm.vfkit import (
    VfkitRest,
    _UnixHTTPConnection,
    check_version,
    parse_version,
    vfkit_argv,
)


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
    stderr = proc.stderr.decode()
    assert f"Error: stat {tmp_path}/vm/nvram.fd: no such file or directory" in stderr
    assert stderr.rstrip().endswith(f"stat {tmp_path}/vm/nvram.fd: no such file or directory")


def test_mac_auto_is_rejected_like_vfkit(tmp_path: Path) -> None:
    spec = standin_spec(tmp_path)
    argv = vfkit_argv(spec, create_nvram=True, binary=str(STANDIN))
    argv[argv.index(f"virtio-net,nat,mac={spec.mac}")] = "virtio-net,nat,mac=auto"
    proc = run(argv, check=False)
    assert proc.returncode == 1
    assert "Error: address auto: invalid MAC address" in proc.stderr.decode()
    assert not (tmp_path / "vm/nvram.fd").exists(), "no store is created on a bad device"
    # vfkit writes its pidfile before it parses devices (and leaves it behind)
    assert spec.pidfile.read_text().isdigit()


def test_flags_parse_like_pflag(tmp_path: Path) -> None:
    spec = standin_spec(tmp_path)
    version = run([STANDIN, "--version"])
    assert version.stdout == b"vfkit version: v0.6.4\n"
    assert parse_version(version.stdout.decode()) == (0, 6, 4)
    assert parse_version("vfkit version: 0.6.2") == (0, 6, 2)
    assert parse_version("vfkit version: unknown") is None
    bad = run([STANDIN, "--cpus=two"], check=False)
    assert (
        bad.returncode == 1
        and (
            'invalid argument "two" for "-c, --cpus" flag: strconv.ParseUint: parsing "two": '
            "invalid syntax"
        )
        in bad.stderr.decode()
    )
    assert b"unknown flag: --frobnicate" in run([STANDIN, "--frobnicate"], check=False).stderr
    assert b"flag needs an argument: --pidfile" in run([STANDIN, "--pidfile"], check=False).stderr
    # --flag=value, --flag value and shorthands all reach the device check: vfkit's error
    # for a disk it cannot open, with the value parsed each way.
    missing = tmp_path / "missing.raw"
    for argv in (
        ["--bootloader=efi,variable-store=x,create", f"--device=virtio-blk,path={missing}"],
        ["-b", "efi,variable-store=x,create", "-d", f"virtio-blk,path={missing}"],
        ["-c2", "-m=256", "--gui", "-bgarbage"],
    ):
        proc = run([STANDIN, "--pidfile", spec.pidfile, *argv], check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        if "-bgarbage" in argv:
            assert "Error: unknown bootloader type: garbage" in err
        else:
            assert (
                f"failed to open file {missing}: open {missing}: no such file or directory" in err
            )


def test_old_vfkit_without_pidfile_is_refused_by_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFKIT_STANDIN_VERSION", "v0.6.1")
    monkeypatch.setattr("watcher.vm.vfkit._checked", {})  # earlier tests saw this binary's 0.6.4
    proc = run([STANDIN, "--pidfile", "x"], check=False)
    assert proc.returncode == 1 and b"Error: unknown flag: --pidfile" in proc.stderr
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    backend = open_backend(make_spec(tmp_path, Backend.VFKIT))
    with pytest.raises(VmError, match=r"vfkit 0\.6\.1 \(.*\) is too old: .*0\.6\.2 or newer"):
        backend.up()
    assert backend.state() is VmState.STOPPED
    monkeypatch.setenv("VFKIT_STANDIN_VERSION", "v0.6.2")
    check_version(str(STANDIN))  # the next release passes


def test_up_fails_clearly_when_the_vm_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REST answering is not enough: a VM stuck in Stopped is a failed start, named as such,
    and the vfkit process is not left behind."""
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    monkeypatch.setenv("VFKIT_STANDIN_HOLD_STOPPED_S", "600")
    monkeypatch.setattr(backend_module, "START_TIMEOUT_S", 3.0)
    backend = open_backend(make_spec(tmp_path, Backend.VFKIT))
    with pytest.raises(VmError) as failed:
        backend.up()
    assert "vfkit did not report VirtualMachineStateRunning (last answer: " in str(failed.value)
    assert "VirtualMachineStateStopped) within 3 s" in str(failed.value)
    assert backend.state() is VmState.STOPPED and backend.pid() is None


def raw_post(sock: Path, body: bytes) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(sock, 5.0)
    try:
        conn.request("POST", "/vm/state", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_rest_api_shapes_create_overwrites_and_exit_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = standin_spec(tmp_path)
    template = find_firmware(spec.arch).vars_template
    spec.nvram.write_bytes(template.read_bytes())
    set_marker(spec.nvram)  # an old store that `create` must replace
    spec.serial_log.write_text("the last launch's log\n")
    monkeypatch.setenv("VFKIT_STANDIN_HOLD_STOPPED_S", "2")
    argv = vfkit_argv(spec, create_nvram=True, binary=str(STANDIN))
    rest = VfkitRest(spec.control_socket)
    with spawn(argv) as proc:
        wait_for(lambda: read_pidfile(spec.pidfile) == proc.pid, 20, "the pidfile")
        wait_for(spec.control_socket.exists, 20, "the REST socket")
        first = rest.state()  # REST before the VM: vfkit's first answer is Stopped
        assert first["state"] == "VirtualMachineStateStopped" and first["canStart"] is True
        wait_for(lambda: rest.state()["state"] == "VirtualMachineStateRunning", 30, "Running")
        assert not has_marker(spec.nvram)
        assert Edk2VarStore(str(spec.nvram)).get_varlist() is not None
        assert "the last launch's log" not in spec.serial_log.read_text()  # truncated

        assert rest.state() == {
            "state": "VirtualMachineStateRunning",
            "canStart": False,
            "canPause": True,
            "canResume": False,
            "canStop": True,
            "canHardStop": True,
        }
        inspect = rest.inspect()
        assert inspect["vcpus"] == 1 and inspect["memoryBytes"] == 256 * 1024 * 1024
        assert inspect["bootloader"] == {
            "kind": "efiBootloader",
            "efiVariableStorePath": str(spec.nvram),
            "createVariableStore": True,
        }
        kinds = [d["kind"] for d in inspect["devices"]]
        assert kinds == ["virtioblk", "virtioblk", "virtionet", "virtioserial", "virtiorng"]
        disks = [d for d in inspect["devices"] if d["kind"] == "virtioblk"]
        assert [d.get("readOnly", False) for d in disks] == [True, False]
        assert disks[0]["imagePath"] == str(spec.iso) and disks[0]["devName"] == "virtio-blk"
        assert inspect["devices"][2]["macAddress"] == spec.mac
        assert inspect["devices"][3]["logFile"] == str(spec.serial_log)

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


@pytest.mark.slow
def test_up_waits_for_running_and_a_reboot_stays_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vm up` returns once vfkit says Running, not when REST first answers (Stopped); a
    guest reboot resets the VM in place: same process, NVRAM kept, no supervisor action."""
    monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    monkeypatch.setenv("VFKIT_STANDIN_HOLD_STOPPED_S", "3")
    spec = make_spec(tmp_path, Backend.VFKIT)
    qmp_socket = spec.state_dir / "standin-qmp.sock"
    monkeypatch.setenv("VFKIT_STANDIN_QMP_SOCKET", str(qmp_socket))
    backend = open_backend(spec)
    try:
        status = backend.up()
        assert status.guest_state == "VirtualMachineStateRunning"
        backend.down(1.0)
        set_marker(spec.nvram)  # as the agent's Boot0001 would be
        pid = backend.up().pid
        supervisor = Supervisor(backend, base_delay_s=0.0)
        with QmpClient(qmp_socket) as qmp:  # the reboot the guest agent ends with
            qmp.execute("system_reset")
        time.sleep(2)
        assert backend.status().pid == pid and supervisor.poll() is Action.NONE
        assert backend.status().guest_state == "VirtualMachineStateRunning"
    finally:
        backend.down(1.0)
    assert has_marker(spec.nvram)
