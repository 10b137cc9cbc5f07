"""The QEMU backend (Linux): the command line as data, plus QMP for state and stop.

The VM reboots in place when the guest reboots (no ``-no-reboot``): the vars pflash is a
file, so the Boot0001 the guest agent wrote is already on disk when the firmware starts
again, and a ``cloudboot vm up`` without a watcher still reaches the staged target.
QEMU exits only on a stop, a crash or a kill. The exception, set at run time over QMP
while a watcher supervises the VM under TCG: the guest agent's reboot ends the process and
the supervisor boots the staged target in a fresh one (``reboot_ends_process``).
"""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

from guest.contract.arch import Arch
from publisher.config import Accel
from publisher.run import require_tool
from watcher.vm import nvram, settle
from watcher.vm.backend import ProcessBackend, file_size
from watcher.vm.firmware import Firmware, find_firmware
from watcher.vm.qmp import QmpClient, QmpError
from watcher.vm.spec import VmSpec

MACHINE = {Arch.X86_64: "q35", Arch.AARCH64: "virt"}
#: TCG CPU models: cortex-a72 avoids emulating pointer authentication (docs/wire-formats.md §7).
#: x86_64 keeps QEMU's default (qemu64): with ``-cpu max`` the agent's boot from the kernel
#: banner to python ready took 4.9-6.3 s against 4.1-4.5 s (three boots each, 2026-11-27;
#: likely because max advertises ERMS, so the guest copies and clears memory with
#: ``rep movsb``/``stosb``, which TCG runs one byte per iteration), and ``Nehalem`` was no
#: faster (3.9-5.1 s).
TCG_CPU = {Arch.X86_64: None, Arch.AARCH64: "cortex-a72"}
DISPLAY_DEVICE = {Arch.X86_64: "VGA", Arch.AARCH64: "virtio-gpu-pci"}


def qemu_opt(value: str | os.PathLike[str]) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")


def qemu_argv(
    spec: VmSpec, firmware: Firmware, *, accel: Accel = Accel.TCG, binary: str | None = None,
    reboot_ends: bool = False,
) -> list[str]:  # fmt: skip
    """The full QEMU command line for ``spec``; pure, so a unit test pins it.

    ``reboot_ends``: the guest's reboot ends the process from the start, as the QMP
    ``set-action`` of ``QemuBackend.reboot_ends_process`` does at run time.

    Disks get no ``bootindex``: with a boot order OVMF prunes the HD() Boot#### entries
    of devices it does not list, which would delete the guest's Boot0001 (docs/wire-formats.md §7).
    """
    arch = spec.arch
    if accel is Accel.AUTO:
        raise ValueError("resolve Accel.AUTO with kvm_usable() before building the argv")
    argv = [binary or arch.qemu_binary, "-name", "cloudboot", "-nodefaults", "-no-user-config"]
    argv += ["-machine", MACHINE[arch], "-accel", accel.value]
    cpu = "host" if accel is Accel.KVM else TCG_CPU[arch]
    if cpu:
        argv += ["-cpu", cpu]
    argv += ["-smp", str(spec.cpus), "-m", str(spec.memory_mib)]
    argv += [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_opt(firmware.code)}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={qemu_opt(spec.nvram)}",
    ]
    for i, disk in enumerate(spec.attached_disks):
        readonly = ",readonly=on" if disk.readonly else ""
        if spec.scratch_disks and disk.config_key.startswith("[vm].disks"):
            readonly = ",snapshot=on"
        argv += [
            "-drive",
            f"if=none,id=disk{i},format=raw{readonly},file={qemu_opt(disk.path)}",
            "-device",
            f"virtio-blk-pci,drive=disk{i}",
        ]
    argv += [
        "-device",
        "virtio-rng-pci",
        "-netdev",
        "user,id=net0",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={spec.mac}",
        "-chardev",
        f"file,id=serial0,path={qemu_opt(spec.serial_log)},append=on",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{qemu_opt(spec.control_socket)},server=on,wait=off",
        "-pidfile",
        os.fspath(spec.pidfile),
    ]
    if spec.gui:
        argv += ["-device", DISPLAY_DEVICE[arch], "-device", "qemu-xhci", "-device", "usb-kbd"]
    else:
        argv += ["-display", "none"]
    if reboot_ends:
        argv += ["-action", "reboot=shutdown"]
    return argv


def _host_has_virtualization(cpuinfo: str) -> bool:
    """x86 hosts advertise vmx/svm; a /dev/kvm without them (nested sandboxes) fails later."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return "vmx" in flags or "svm" in flags
    return True  # no flags line (aarch64): trust /dev/kvm


def kvm_usable(arch: Arch) -> bool:
    """KVM only for a guest of the host's arch, with a /dev/kvm that can create a VM."""
    if Arch.parse(platform.machine()) is not arch:
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        kvm_create_vm = 0xAE01
        vm_fd = fcntl.ioctl(fd, kvm_create_vm, 0)
        os.close(vm_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return _host_has_virtualization(cpuinfo)


class QemuBackend(ProcessBackend):
    """QEMU launched detached; pidfile and QMP socket in state_dir find it again."""

    process_names = ("qemu-system-x86_64", "qemu-system-aarch64")

    def __init__(self, spec: VmSpec, firmware: Firmware | None = None) -> None:
        super().__init__(spec)
        self.firmware = firmware or find_firmware(spec.arch)
        #: Set by a launch from the template: (settle key, serial log offset at launch).
        self._capture: tuple[str, int] | None = None

    def _accel(self) -> Accel:
        if self.spec.accel is Accel.AUTO:
            return Accel.KVM if kvm_usable(self.spec.arch) else Accel.TCG
        return self.spec.accel

    def _argv(self) -> list[str]:
        binary = require_tool(self.spec.arch.qemu_binary, "qemu-system-x86 / qemu-system-arm")
        return qemu_argv(self.spec, self.firmware, accel=self._accel(), binary=binary)

    def _launch_argv(self, reset_nvram: bool) -> list[str]:
        """A reset (or a first launch) restores the settled copy for this argv, else the
        template, and then this launch takes the settled copy (watcher/vm/settle.py)."""
        argv = self._argv()
        self._capture = None
        if reset_nvram or not self.spec.nvram.exists():
            key = settle.settle_key(self.firmware, argv)
            if not settle.restore(self.spec.nvram, self.firmware, key):
                self._capture = (key, file_size(self.spec.serial_log))
        return argv

    def _after_start(self) -> None:
        if self._capture is None:
            return
        key, offset = self._capture
        child = self._child
        settle.start_capture(
            self.spec.nvram, self.spec.control_socket, self.spec.serial_log, offset, key,
            alive=lambda: child is not None and child.poll() is None,
        )  # fmt: skip

    def _wipe_nvram(self) -> None:
        """`vm reset-nvram`: the template itself, and the settled copies go too (the next
        restart from the template takes a new one)."""
        nvram.restore_template(self.spec.nvram, self.firmware.vars_template)
        for copy in nvram.settled_copies(self.spec.nvram):
            copy.unlink(missing_ok=True)

    def _clear_nvram_for_restart(self) -> None:
        key = settle.settle_key(self.firmware, self._argv())
        settle.restore(self.spec.nvram, self.firmware, key)

    def _nvram_template(self) -> Path | None:
        return self.firmware.vars_template

    def _forget_staged_target(self) -> bool:
        return nvram.forget_staged_target_in(self.spec.nvram)

    def _control_ready(self) -> bool:
        try:
            with QmpClient(self.spec.control_socket, timeout=2.0) as qmp:
                qmp.execute("query-status")
            return True
        except (OSError, QmpError):
            return False

    def _guest_state(self) -> str | None:
        try:
            with QmpClient(self.spec.control_socket, timeout=2.0) as qmp:
                reply = qmp.execute("query-status")
        except (OSError, QmpError):
            return None
        status = reply.get("status") if isinstance(reply, dict) else None
        return str(status) if status else None

    def reboot_ends_process(self, on: bool) -> int | None:
        """Under TCG, hand the guest's next reboot to a fresh QEMU (QMP ``set-action``).

        A warm reset after the guest agent's pass reached the boot manager up to 6 s later
        (median 2.5 s) than a cold start of the same VM (docs/ARCHITECTURE.md, "The second
        pass"); after a small target's run it does not, so the cost is the emulator's state
        the agent's Python leaves behind, not the firmware or NVRAM. A new process starts
        clean, so the watcher's supervisor lets this one exit on that reboot and starts the
        next from the same NVRAM. None under KVM (which resets in place cheaply) and when
        the VM does not answer: then the reboot stays in place, which is only slower."""
        if self._accel() is not Accel.TCG or (pid := self.pid()) is None:
            return None
        try:
            with QmpClient(self.spec.control_socket, timeout=2.0) as qmp:
                qmp.execute("set-action", {"reboot": "shutdown" if on else "reset"})
        except (OSError, QmpError):
            return None
        return pid

    def _request_stop(self) -> None:
        """ACPI power button: a guest that listens shuts down cleanly."""
        self._qmp_quietly("system_powerdown")

    def _force_stop(self) -> None:
        self._qmp_quietly("quit")

    def _qmp_quietly(self, command: str) -> None:
        try:
            with QmpClient(self.spec.control_socket, timeout=2.0) as qmp:
                qmp.execute(command)
        except (OSError, QmpError):
            pass  # gone already, or going: the caller waits for the process either way
