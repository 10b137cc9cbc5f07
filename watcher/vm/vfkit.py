"""The vfkit backend (macOS, Apple Virtualization.framework).

vfkit has no start or restart endpoint and exits whenever the VM stops, so every
restart is: stop, wait for the process to exit, launch again. NVRAM reset is the
``create`` option of ``--bootloader efi,variable-store=...`` (it overwrites a store);
we delete the store when asked to reset and pass ``create`` whenever it is missing.

Facts this relies on (docs/wire-formats.md §6): ``--pidfile`` exists from vfkit 0.6.2,
so an older vfkit is refused up front by its ``vfkit --version``; vfkit serves REST
before it starts the VM and first reports ``VirtualMachineStateStopped``, so a start is
done only when ``/vm/state`` says ``VirtualMachineStateRunning``; the serial log is
truncated at every launch. A guest reboot usually resets the VM in place (vfkit keeps
running); should a VZ version stop it instead, vfkit exits and the supervisor relaunches
it with NVRAM untouched. While the VM runs, the host's loopback services the guest needs
(the registry) are forwarded from the bridge address (``watcher.vm.bridge``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from publisher.run import CommandError, ToolMissingError, require_tool, run
from watcher.vm import nvram
from watcher.vm.backend import ProcessBackend
from watcher.vm.bridge import BridgeForwarder, Forward, bridge_address
from watcher.vm.spec import VmError, VmSpec

#: Framebuffer size for ``--gui`` (vfkit needs a virtio-gpu device to show anything).
GUI_WIDTH, GUI_HEIGHT = 1280, 800


def _vfkit_path(path: Path, key: str) -> str:
    """vfkit splits device options on commas and has no escape for them."""
    text = os.fspath(path)
    if "," in text:
        raise VmError(f"{key}: vfkit cannot take a path containing a comma: {text}")
    return text


def vfkit_argv(spec: VmSpec, create_nvram: bool, *, binary: str = "vfkit") -> list[str]:
    """The vfkit command line (docs/wire-formats.md §6.1) for ``spec``; pure."""
    store = "efi,variable-store=" + _vfkit_path(spec.nvram, "[vm].nvram")
    if create_nvram:
        store += ",create"
    argv = [binary, "--cpus", str(spec.cpus), "--memory", str(spec.memory_mib)]
    argv += ["--bootloader", store]
    for disk in spec.attached_disks:
        device = "virtio-blk,path=" + _vfkit_path(disk.path, disk.config_key)
        argv += ["--device", device + (",readonly" if disk.readonly else "")]
    argv += [
        "--device",
        f"virtio-net,nat,mac={spec.mac}",
        "--device",
        "virtio-serial,logFilePath=" + _vfkit_path(spec.serial_log, "[vm].serial_log"),
        "--device",
        "virtio-rng",
    ]
    if spec.gui:
        argv += [
            "--gui",
            "--device",
            "virtio-input,keyboard",
            "--device",
            "virtio-input,pointing",
            "--device",
            f"virtio-gpu,width={GUI_WIDTH},height={GUI_HEIGHT}",
        ]
    argv += [
        "--pidfile",
        os.fspath(spec.pidfile),
        "--restful-uri",
        f"unix://{spec.control_socket}",
        "--log-level",
        "info",
    ]
    return argv


#: The oldest vfkit with ``--pidfile`` (how a later CLI call finds the VM again).
MIN_VERSION = (0, 6, 2)
_VERSION = re.compile(r"version:?\s*v?(\d+)\.(\d+)\.(\d+)")
RUNNING = "VirtualMachineStateRunning"
#: States after which the VM will not come up by itself.
FAILED_STATES = ("VirtualMachineStateError",)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``vfkit version: v0.6.4`` (cobra's template as vfkit sets it) -> (0, 6, 4); pure."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


_checked: dict[tuple[str, float], tuple[int, int, int]] = {}


def check_version(binary: str) -> tuple[int, int, int]:
    """Refuse a vfkit older than 0.6.2, naming its version (checked once per binary)."""
    try:
        key = (binary, os.stat(binary).st_mtime)
    except OSError as exc:
        raise VmError(f"vfkit: cannot run {binary}: {exc.strerror}") from None
    if key in _checked:
        return _checked[key]
    try:
        proc = run([binary, "--version"], timeout=30)
    except (CommandError, ToolMissingError, OSError) as exc:
        raise VmError(f"`{binary} --version` failed: {exc}") from None
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    version = parse_version(output)
    if version is None:
        raise VmError(
            f"cannot tell the vfkit version from `{binary} --version`: {output[:200]!r} "
            f"(cloudboot needs vfkit {'.'.join(map(str, MIN_VERSION))} or newer)"
        )
    if version < MIN_VERSION:
        found, needed = ".".join(map(str, version)), ".".join(map(str, MIN_VERSION))
        raise VmError(
            f"vfkit {found} ({binary}) is too old: cloudboot needs vfkit {needed} or newer "
            "(--pidfile); upgrade it with `brew upgrade vfkit`"
        )
    _checked[key] = version
    return version


def find_vfkit() -> str:
    """``$CLOUDBOOT_VFKIT`` (tests point it at the stand-in), else vfkit on PATH."""
    override = os.environ.get("CLOUDBOOT_VFKIT")
    if override:
        if not os.access(override, os.X_OK):
            raise VmError(f"CLOUDBOOT_VFKIT: not an executable: {override}")
        return override
    return require_tool("vfkit", "brew install vfkit")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class VfkitRestError(VmError):
    pass


class VfkitRest:
    """vfkit's REST API over its unix socket (``--restful-uri unix://...``)."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, url, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            detail = data[:200].decode(errors="replace")
            raise VfkitRestError(f"vfkit {method} {url}: HTTP {response.status}: {detail}")
        return json.loads(data) if data.strip() else None

    def state(self) -> dict[str, Any]:
        answer = self._request("GET", "/vm/state")
        if not isinstance(answer, dict) or "state" not in answer:
            raise VfkitRestError(f"vfkit GET /vm/state: unexpected answer {answer!r}")
        return answer

    def change_state(self, state: str) -> None:
        """POST /vm/state (Stop, HardStop, Pause, Resume); vfkit answers 202."""
        self._request("POST", "/vm/state", {"state": state})

    def inspect(self) -> Any:
        return self._request("GET", "/vm/inspect")


#: What a vanished vfkit looks like on its socket: the VM is stopped.
_GONE = (ConnectionError, FileNotFoundError, http.client.HTTPException, TimeoutError)


def previous_serial_log(log: Path) -> Path:
    return log.with_name(log.name + ".1")


class VfkitBackend(ProcessBackend):
    process_names = ("vfkit",)
    serial_truncated_at_launch = True

    def __init__(self, spec: VmSpec) -> None:
        super().__init__(spec)
        self.rest = VfkitRest(spec.control_socket)
        self._last_state = "no answer"
        self.forwarder: BridgeForwarder | None = None

    def _launch_argv(self, reset_nvram: bool) -> list[str]:
        binary = find_vfkit()
        check_version(binary)
        create = reset_nvram or not self.spec.nvram.exists()
        self._keep_previous_log()
        return vfkit_argv(self.spec, create, binary=binary)

    def _keep_previous_log(self) -> None:
        """vfkit truncates the serial log at launch: the last launch's goes to ``.1``
        (after a relaunch, that is the guest agent's pass)."""
        log = self.spec.serial_log
        if log.is_file() and log.stat().st_size:
            os.replace(log, previous_serial_log(log))

    def _after_start(self) -> None:
        """Forward the host's loopback services (the registry) from the bridge address."""
        self._after_stop()
        if not self.spec.host_services:
            return
        forwards = [Forward(port, host, port) for host, port in self.spec.host_services]
        self.forwarder = BridgeForwarder(bridge_address(), forwards)
        self.forwarder.start()

    def _after_stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None

    def _not_ready_detail(self) -> str:
        return f"did not report {RUNNING} (last answer: {self._last_state})"

    def _wipe_nvram(self) -> None:
        nvram.delete_store(self.spec.nvram)

    def _nvram_template(self) -> Path | None:
        return None  # vfkit's store is made by Virtualization.framework: no template file

    def _forget_staged_target(self) -> bool:
        raise VmError(
            "--menu edits QEMU (edk2) vars files; vfkit keeps its own store format: "
            "use `cloudboot vm reset-nvram` without --menu"
        )

    def _control_ready(self) -> bool:
        """Running, not merely answering: vfkit's first answer is Stopped."""
        try:
            self._last_state = str(self.rest.state()["state"])
        except (*_GONE, OSError, VmError, ValueError):
            return False
        if self._last_state in FAILED_STATES:
            raise VmError(f"vfkit reports {self._last_state} while starting the VM")
        return self._last_state == RUNNING

    def _guest_state(self) -> str | None:
        try:
            return str(self.rest.state()["state"])
        except (*_GONE, OSError, VmError, ValueError):
            return None

    def _request_stop(self) -> None:
        self._post_quietly("Stop")

    def _force_stop(self) -> None:
        self._post_quietly("HardStop")

    def _post_quietly(self, state: str) -> None:
        try:
            self.rest.change_state(state)
        except _GONE:
            pass  # the reply raced vfkit's exit: stopped
        except VfkitRestError:
            pass  # e.g. Stop refused (canStop false): the caller escalates after its wait
