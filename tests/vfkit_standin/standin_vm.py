"""The vfkit stand-in's VM side: QEMU behind Virtualization.framework's state machine,
vmnet's NAT emulated in a network namespace, and vfkit's REST API (see ``vfkit``'s
docstring for the facts mirrored). Standard library only, like the stand-in itself.
"""

from __future__ import annotations

import ctypes
import fcntl
import http.server
import json
import os
import platform
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from typing import Any

FIRMWARE = {
    "x86_64": ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", "q35"),
    "aarch64": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd", "virt"),
}
SUBNET, BRIDGE, DHCP_START = "192.168.64.0/24", "192.168.64.1", "192.168.64.2"
CLONE_NEWNET, SIOCSIFFLAGS, IFF_UP_LOOPBACK_RUNNING = 0x40000000, 0x8914, 0x1 | 0x8 | 0x40


class Failure(Exception):
    """An error vfkit reports (cobra prints it, then main prints it again; exit 1)."""


def netdev(mac: str) -> list[str]:
    """vmnet's shared subnet; QEMU runs in its own network namespace (see the top)."""
    user = f"user,id=n0,net={SUBNET},host={BRIDGE},dhcpstart={DHCP_START}"
    return ["-netdev", user, "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]


def bridge_ports() -> list[int]:
    return [int(p) for p in os.environ.get("VFKIT_STANDIN_BRIDGE_PORTS", "").split(",") if p]


class Bridge:
    """The bridge address as the guest meets it: QEMU's user network sends a guest
    connection to 192.168.64.1:PORT to 127.0.0.1:PORT *in QEMU's network namespace*,
    where only these listeners exist; each relays to the emulated bridge address on the
    host (``VFKIT_STANDIN_BRIDGE_HOST``). Nothing else on the host is reachable."""

    def __init__(self, qemu_pid: int) -> None:
        self.host = os.environ.get("VFKIT_STANDIN_BRIDGE_HOST", "127.0.64.1")
        self.listeners: list[socket.socket] = []
        error: list[BaseException] = []
        worker = threading.Thread(target=self._listen_in, args=(qemu_pid, error))
        worker.start()
        worker.join()
        if error:
            raise Failure(f"cannot set up the NAT emulation: {error[0]}")
        for listener in self.listeners:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _listen_in(self, pid: int, error: list[BaseException]) -> None:
        """In a thread of its own: setns(2) moves only the calling thread."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/proc/{pid}/ns/net") as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # ip link set lo up
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", IFF_UP_LOOPBACK_RUNNING))
            for port in bridge_ports():
                listener = socket.create_server(("127.0.0.1", port))
                self.listeners.append(listener)
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    def _accept(self, listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        while True:
            try:
                guest, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(guest, port), daemon=True).start()

    def _relay(self, guest: socket.socket, port: int) -> None:
        try:
            host = socket.create_connection((self.host, port), timeout=10)
        except OSError:
            guest.close()  # nothing bound to the bridge on that port
            return
        host.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        other = threading.Thread(target=pump, args=(host, guest), daemon=True)
        other.start()
        pump(guest, host)
        other.join()
        guest.close()
        host.close()

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


def qemu_argv(config: Any, qmp: str) -> list[str]:
    arch = platform.machine()
    code, _, machine = FIRMWARE[arch]
    qemu = os.environ.get("VFKIT_STANDIN_QEMU") or f"qemu-system-{arch}"
    argv = [qemu, "-nodefaults", "-no-user-config", "-S"]
    if os.environ.get("VFKIT_STANDIN_REBOOT", "in-place") == "exit":
        argv.append("-no-reboot")
    argv += ["-machine", machine, "-accel", "tcg", "-smp", str(config.cpus)]
    argv += ["-m", str(config.memory_mib)]
    if arch == "aarch64":
        argv += ["-cpu", "cortex-a72"]
    argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}"]
    argv += ["-drive", f"if=pflash,format=raw,unit=1,file={config.store}"]
    for i, dev in enumerate(config.of_kind("virtioblk")):
        ro = ",readonly=on" if dev.get("readOnly") else ""
        argv += ["-drive", f"if=none,id=d{i},format=raw{ro},file={dev['imagePath']}"]
        argv += ["-device", f"virtio-blk-pci,drive=d{i}"]
    for dev in config.of_kind("virtionet")[:1]:
        argv += netdev(str(dev.get("macAddress") or "52:54:00:00:00:01"))
    if config.of_kind("virtiorng"):
        argv += ["-device", "virtio-rng-pci"]
    for i, dev in enumerate(config.of_kind("virtioserial")):
        # no append=on: QEMU truncates the file, as VZ's file attachment does
        argv += ["-device", "virtio-serial-pci"]
        argv += ["-chardev", f"file,id=con{i},path={dev['logFile']}"]
        argv += ["-device", f"virtconsole,chardev=con{i}"]
    firmware_log = os.environ.get("VFKIT_STANDIN_FIRMWARE_LOG")
    if firmware_log:  # test hook, not vfkit's: the firmware's console, appended per launch
        argv += ["-chardev", f"file,id=fw,path={firmware_log},append=on", "-serial", "chardev:fw"]
    argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    argv += ["-display", "none"] if not config.gui else ["-device", "VGA"]
    return argv


def qemu_preexec() -> None:
    """QEMU must not outlive a SIGKILLed stand-in (PR_SET_PDEATHSIG), and gets a network
    namespace of its own (empty loopback; the NAT emulation above needs root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.write(2, b"vfkit stand-in: unshare(CLONE_NEWNET) failed: run it as root\n")
        os._exit(127)


class Qmp:
    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, command: str) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            sock.connect(self.path)
            reader = sock.makefile("rb")
            reader.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                while True:
                    message = json.loads(reader.readline())
                    if "return" in message or "error" in message:
                        break
            return message


STATES = {
    "running": "VirtualMachineStateRunning",
    "paused": "VirtualMachineStatePaused",
    "prelaunch": "VirtualMachineStateStopped",
    "shutdown": "VirtualMachineStateStopped",
}


class Vm:
    """QEMU behind VZ's state machine; ``qemu`` is None until the VM is started."""

    def __init__(self) -> None:
        self.qemu: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.bridge: Bridge | None = None

    def state(self) -> dict:
        name = "VirtualMachineStateStopped"
        if self.qemu is not None and self.qmp is not None and self.qemu.poll() is None:
            try:
                status = self.qmp.run("query-status").get("return", {}).get("status", "")
                name = STATES.get(status, "VirtualMachineStateError")
            except (OSError, ValueError):
                pass
        running = name == "VirtualMachineStateRunning"
        paused = name == "VirtualMachineStatePaused"
        return {
            "state": name,
            "canStart": name == "VirtualMachineStateStopped",
            "canPause": running,
            "canResume": paused,
            "canStop": running,
            "canHardStop": running or paused,
        }

    def change(self, new_state: str) -> str | None:
        """Apply a state change; returns an error text or None."""
        command = {"Stop": "system_powerdown", "HardStop": "quit", "Pause": "stop",
                   "Resume": "cont"}.get(new_state)  # fmt: skip
        if command is None:
            return f"invalid new VMState: {new_state}"
        if self.qmp is None:
            return "the virtual machine is not running"
        try:
            answer = self.qmp.run(command)
        except (OSError, ValueError) as exc:
            return str(exc)
        if "error" in answer:
            return answer["error"].get("desc", "error")
        return None


def serve(vm: Vm, config: Any) -> socketserver.BaseServer | None:
    if config.rest.startswith("none:"):
        return None

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            print("rest: " + fmt % args, file=sys.stderr)

        def address_string(self) -> str:
            return "unix"

        def reply(self, code: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            if body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/vm/state":
                self.reply(200, vm.state())
            elif self.path == "/vm/inspect":
                self.reply(200, config.inspect())
            else:
                self.reply(404, {"error": "404 page not found"})

        def do_POST(self) -> None:
            if self.path != "/vm/state":
                self.reply(404, {"error": "404 page not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                new_state = json.loads(self.rfile.read(length))["state"]
                if not isinstance(new_state, str):
                    raise TypeError(new_state)
            except (ValueError, KeyError, TypeError) as exc:
                self.reply(400, {"error": f"invalid request: {exc}"})
                return
            error = vm.change(new_state)
            if error:
                self.reply(500, {"error": error})
            else:
                self.reply(202)

    server: socketserver.BaseServer
    if config.rest.startswith("unix://"):
        path = config.rest.removeprefix("unix://")
        if not path:
            raise Failure("invalid unix uri: missing path")

        class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        if os.path.exists(path):
            os.unlink(path)
        server = UnixServer(path, Handler)
    elif config.rest.startswith(("tcp://", "http://")):
        host, _, port = config.rest.split("://", 1)[1].rpartition(":")
        if not port:
            raise Failure("invalid TCP uri: missing port")
        server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    else:
        raise Failure(f"invalid scheme {config.rest.split(':', 1)[0]}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start(vm: Vm, config: Any, private: str) -> None:
    arch = platform.machine()
    # Test hook, not vfkit's: where to put QEMU's QMP socket, so a test can make the
    # guest reboot (QMP system_reset) or watch its state.
    qmp_path = os.environ.get("VFKIT_STANDIN_QMP_SOCKET") or os.path.join(private, "qmp.sock")
    if os.path.exists(qmp_path):
        os.unlink(qmp_path)
    vm.qemu = subprocess.Popen(qemu_argv(config, qmp_path), preexec_fn=qemu_preexec)
    deadline = time.monotonic() + 20
    while not os.path.exists(qmp_path):
        if vm.qemu.poll() is not None or time.monotonic() > deadline:
            raise Failure(f"the stand-in's qemu-system-{arch} did not start")
        time.sleep(0.05)
    vm.qmp = Qmp(qmp_path)
    vm.bridge = Bridge(vm.qemu.pid)
    error = vm.change("Resume")  # leave -S: the VM starts
    if error:
        raise Failure(f"timeout waiting for VM state ({error})")
