"""The way a vfkit guest reaches a service on the Mac's loopback: a forwarder on the bridge.

Under vfkit's NAT the guest sits on vmnet's shared subnet and the host is the bridge
address (192.168.64.1 by default), which exists only while a VM runs; the host's loopback
is not reachable from the guest (docs/wire-formats.md §6). The embedded registry listens
on loopback only, and should stay there: binding it to all addresses would put it on the
LAN. So while the VM runs, the vfkit backend binds one small TCP forwarder per port to the
bridge address only, relaying to the loopback service; the guest names the host by its
DHCP gateway (``{{.Gateway}}`` in ``cloudboot.plan``), which is that bridge address. The
forwarder is bound after vfkit reports the VM running (the bridge appears with it), retried
while the address is not there yet, and closed when the VM stops.

Why not the alternatives (README.md, "macOS"): gvproxy has no Homebrew formula of its own
and changes vfkit's network device; binding the registry to 0.0.0.0 exposes it on the LAN;
vsock would need a guest-side proxy in the initramfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import plistlib
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: vmnet's default shared-network address (the host, as a NAT guest sees it).
DEFAULT_BRIDGE = "192.168.64.1"
#: Where macOS keeps a changed shared-network address (``Shared_Net_Address``).
VMNET_PLIST = Path("/Library/Preferences/SystemConfiguration/com.apple.vmnet.plist")
#: Overrides the bridge address (the vfkit stand-in's emulated bridge in tests).
BRIDGE_ENV = "CLOUDBOOT_VFKIT_BRIDGE_ADDRESS"
#: The bridge appears while VZ starts the VM: how long binding is retried.
BIND_TIMEOUT_S = 30.0
#: Connections relayed at once (the guest agent needs a handful).
MAX_CONNECTIONS = 64


def bridge_address(platform: str = sys.platform, plist: Path = VMNET_PLIST) -> str:
    """The host's address on vmnet's shared network: $CLOUDBOOT_VFKIT_BRIDGE_ADDRESS, else
    macOS's configured ``Shared_Net_Address``, else vmnet's default."""
    override = os.environ.get(BRIDGE_ENV)
    if override:
        return override
    if platform == "darwin":
        with contextlib.suppress(OSError, ValueError, plistlib.InvalidFileException):
            value = plistlib.loads(plist.read_bytes()).get("Shared_Net_Address")
            if isinstance(value, str) and value:
                return value
    return DEFAULT_BRIDGE


@dataclass(frozen=True)
class Forward:
    """Guest-visible ``bridge:port`` -> host ``target_host:target_port``."""

    port: int
    target_host: str
    target_port: int


class BridgeForwarder:
    """TCP forwarders bound to the bridge address only; ``close`` ends them and their
    connections. Binding runs in the background (the address may not exist yet)."""

    def __init__(
        self, address: str, forwards: Sequence[Forward], *, bind_timeout_s: float = BIND_TIMEOUT_S
    ) -> None:
        self.address = address
        self.forwards = tuple(forwards)
        self.bind_timeout_s = bind_timeout_s
        self._closed = threading.Event()
        self._bound = threading.Event()
        self._listeners: list[socket.socket] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._bind, name="vfkit-bridge-bind", daemon=True).start()

    def wait_bound(self, timeout: float) -> bool:
        return self._bound.wait(timeout)

    def _bind(self) -> None:
        deadline = time.monotonic() + self.bind_timeout_s
        for forward in self.forwards:
            while not self._closed.is_set():
                try:
                    listener = socket.create_server((self.address, forward.port))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                        self.error = f"cannot listen on {self.address}:{forward.port}: {exc}"
                        log.error("vfkit bridge forwarder", error=self.error)
                        return
                    time.sleep(0.2)  # the bridge comes up with the VM
            else:
                return
            with self._lock:
                if self._closed.is_set():
                    listener.close()
                    return
                self._listeners.append(listener)
            target = f"{forward.target_host}:{forward.target_port}"
            log.info("vfkit bridge forwarder", listen=f"{self.address}:{forward.port}", to=target)
            threading.Thread(target=self._accept, args=(listener, forward), daemon=True).start()
        self._bound.set()

    def _accept(self, listener: socket.socket, forward: Forward) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                client.close()  # bounded: a flood from the guest does not pile up threads
                continue
            threading.Thread(target=self._relay, args=(client, forward), daemon=True).start()

    def _relay(self, client: socket.socket, forward: Forward) -> None:
        try:
            try:
                upstream = socket.create_connection(
                    (forward.target_host, forward.target_port), timeout=10
                )
            except OSError:
                client.close()
                return
            upstream.settimeout(None)
            with self._lock:
                self._connections.update((client, upstream))
            pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            pump.start()
            _pump(client, upstream)
            pump.join()
            with self._lock:
                self._connections.difference_update((client, upstream))
            client.close()
            upstream.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for sock in (*self._listeners, *self._connections):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._listeners.clear()
            self._connections.clear()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
