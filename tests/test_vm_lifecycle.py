"""Real firmware under QEMU TCG, driven through both backends (QEMU, and vfkit's stand-in).

No OS is needed: OVMF with nothing bootable still runs its boot manager and writes its
variables into the vars file. To show what NVRAM handling means for a user we put a
marker variable into the store (as the guest agent's Boot0001 would be) and follow it:
it survives a plain restart, a killed VM and the supervisor's relaunches, and is gone
after a requested restart with NVRAM reset. virt-firmware reads the store back.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.config import Backend
from tests.helpers import STANDIN, STOP_TIMEOUT, has_marker, make_spec, set_marker, wait_for
from watcher.vm import VmBackend, VmError, VmState, open_backend
from watcher.vm.firmware import find_firmware
from watcher.vm.qmp import QmpClient
from watcher.vm.state import process_cmdline
from watcher.vm.supervisor import Action, Supervisor


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=[Backend.QEMU, Backend.VFKIT], ids=["qemu", "vfkit"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VmBackend]:
    kind: Backend = request.param
    if kind is Backend.VFKIT:
        monkeypatch.setenv("CLOUDBOOT_VFKIT", str(STANDIN))
    vm = open_backend(make_spec(tmp_path, kind))
    try:
        yield vm
    finally:
        vm.down(STOP_TIMEOUT)


@pytest.mark.slow
def test_up_status_restart_reset_and_supervision(backend: VmBackend) -> None:
    spec = backend.spec
    template = find_firmware(spec.arch).vars_template
    names = {Backend.QEMU: "qemu-system", Backend.VFKIT: "vfkit"}[spec.backend]

    # up: a fresh store from the template, which the firmware then writes to
    st = backend.up()
    assert st.state is VmState.RUNNING and st.pid is not None
    assert names in " ".join(process_cmdline(st.pid) or [])
    wait_for(lambda: sha(spec.nvram) != sha(template), 90, "the firmware to write NVRAM")
    if spec.backend is Backend.QEMU:  # vfkit's log is a virtio console: Linux only
        wait_for(
            lambda: any("BdsDxe" in line for line in backend.status().serial_tail),
            60,
            "the boot manager on the serial log",
        )
    st = backend.status()
    assert st.state is VmState.RUNNING and st.uptime_s is not None and st.uptime_s > 0
    assert st.nvram.path == spec.nvram and st.nvram.exists
    with pytest.raises(VmError, match="refusing to reset NVRAM: the VM is running"):
        backend.reset_nvram()

    # down
    first_pid = st.pid
    assert backend.down(STOP_TIMEOUT) is True
    assert backend.status().state is VmState.STOPPED and backend.status().pid is None
    assert process_cmdline(first_pid) is None
    assert backend.down(STOP_TIMEOUT) is False

    # something staged in NVRAM survives a plain restart ...
    set_marker(spec.nvram)
    backend.up()
    st = backend.restart(reset_nvram=False, stop_timeout=STOP_TIMEOUT)
    assert st.state is VmState.RUNNING and st.pid not in (None, first_pid)

    # ... and a killed VM, which status and the supervisor notice
    now = [0.0]
    supervisor = Supervisor(
        backend, max_relaunches=2, window_s=300, base_delay_s=5.0, clock=lambda: now[0]
    )
    assert supervisor.poll() is Action.NONE
    for expected in (Action.RELAUNCHED, Action.WAITING, Action.GAVE_UP):
        killed = backend.status().pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: backend.status().state is VmState.EXITED, 10, "the kill to show")
        assert backend.status().pid is None
        assert supervisor.poll() is expected
        if expected is Action.WAITING:  # a second stop in a row: relaunch backed off
            now[0] += 4.9
            assert supervisor.poll() is Action.WAITING
            now[0] += 0.2
            assert supervisor.poll() is Action.RELAUNCHED
    # crash loop: reported, and not relaunched again
    assert supervisor.gave_up and "crash loop" in supervisor.events[-1].detail
    assert supervisor.poll() is Action.GAVE_UP
    assert backend.status().state is VmState.EXITED
    assert has_marker(spec.nvram), "a relaunch must not touch NVRAM"

    # a requested restart resets NVRAM and clears the crash loop
    supervisor.request_restart(reset_nvram=True, stop_timeout=STOP_TIMEOUT)
    assert not supervisor.gave_up and backend.status().state is VmState.RUNNING
    backend.down(STOP_TIMEOUT)
    assert not has_marker(spec.nvram), "a reset must drop what the guest staged"

    # reset-nvram on a stopped VM: QEMU gets the template back byte for byte; vfkit's
    # store is removed so the next launch passes `create`
    set_marker(spec.nvram)
    backend.reset_nvram()
    if spec.backend is Backend.QEMU:
        assert spec.nvram.read_bytes() == template.read_bytes()
        assert backend.status().nvram.pristine is True
    else:
        assert not spec.nvram.exists()
        st = backend.up()
        assert "--bootloader" in (cmd := process_cmdline(st.pid or 0) or [])
        assert cmd[cmd.index("--bootloader") + 1].endswith(",create")
        backend.down(STOP_TIMEOUT)
        assert not has_marker(spec.nvram)


@pytest.mark.slow
def test_stale_pidfile_of_another_process_is_never_signalled(backend: VmBackend) -> None:
    """A pidfile naming a live process that is not our VM (pid reuse) reads as stopped."""
    spec = backend.spec
    spec.state_dir.mkdir(parents=True)
    spec.pidfile.write_text(f"{os.getpid()}\n")
    assert backend.status().state is VmState.STOPPED
    assert backend.down(STOP_TIMEOUT) is False  # and we are still alive to assert it
    st = backend.up()
    assert st.pid != os.getpid() and backend.status().state is VmState.RUNNING


@pytest.mark.slow
def test_guest_reboot_keeps_nvram(backend: VmBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU reboots in place; here vfkit's VM stops instead (the stand-in's exit-on-reboot
    mode: should a VZ version do that), and the supervisor relaunches it. Either way the
    store keeps what the guest staged, so the firmware boots the staged Boot0001. (vfkit's
    usual reboot in place: tests/test_vm_vfkit_standin.py.)"""
    spec = backend.spec
    qmp_socket = spec.control_socket
    if spec.backend is Backend.VFKIT:  # reach the QEMU inside the stand-in
        qmp_socket = spec.state_dir / "standin-qmp.sock"
        monkeypatch.setenv("VFKIT_STANDIN_QMP_SOCKET", str(qmp_socket))
        monkeypatch.setenv("VFKIT_STANDIN_REBOOT", "exit")
    backend.up()
    backend.down(STOP_TIMEOUT)
    set_marker(spec.nvram)
    pid = backend.up().pid
    supervisor = Supervisor(backend, base_delay_s=0.0)

    with QmpClient(qmp_socket) as qmp:  # the reset a rebooting guest causes
        qmp.execute("system_reset")
    if spec.backend is Backend.QEMU:
        time.sleep(1)
        assert backend.status().pid == pid and supervisor.poll() is Action.NONE
    else:  # a VZ that reports a guest reboot as a stop: vfkit exits
        wait_for(lambda: backend.status().state is VmState.EXITED, 10, "vfkit to exit")
        assert supervisor.poll() is Action.RELAUNCHED
        status = backend.status()  # one read: the relaunched guest may reset (and exit) soon
        assert status.state is VmState.RUNNING and status.pid != pid
        assert "--bootloader" in (cmd := process_cmdline(status.pid or 0) or [])
        assert not cmd[cmd.index("--bootloader") + 1].endswith(",create")
    backend.down(STOP_TIMEOUT)
    assert has_marker(spec.nvram)
