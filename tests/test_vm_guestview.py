"""What the guest is told about the host, per VM backend (README.md "macOS").

- The baked plan ref follows the workspace's config: ``[registry].url`` + ``[publish]``,
  with a loopback registry named by the guest's DHCP gateway (``{{.Gateway}}``, rendered
  by the guest agent) so the same boot.iso finds the host under QEMU (10.0.2.2) and vfkit
  (the vmnet bridge address); a registry elsewhere is named as it is.
- The console is the backend's: hvc0 (virtio console) for vfkit, the arch's UART for QEMU.
- Under vfkit the loopback registry is forwarded from the bridge address only, and only
  while the VM runs (``watcher.vm.bridge``): real sockets here, the address not existing
  yet is retried, another address is not listened on.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher.config import load_config
from publisher.localregistry import free_port
from publisher.media.recipe import configured, load_recipe
from tests.helpers import REPO
from watcher.vm.bridge import BridgeForwarder, Forward, bridge_address
from watcher.vm.spec import VmSpec


def workspace(root: Path, registry: str, vm: str = "") -> Path:
    (root / "plans").mkdir(parents=True)
    (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{registry}"\n[vm]\n{vm}')
    return root


def test_plan_ref_and_console_follow_config_and_backend(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "kernel" / "recipe.toml")
    qemu = load_config(workspace(tmp_path / "a", "127.0.0.1:5123", 'backend = "qemu"\n'))
    line = configured(recipe, qemu).cmdline_for(Arch.X86_64)
    assert "cloudboot.plan=oci://{{.Gateway}}:5123/cloudboot/default:latest" in line
    assert line.endswith("console=ttyS0")
    assert configured(recipe, qemu).cmdline_for(Arch.AARCH64).endswith("console=ttyAMA0")

    vfkit = load_config(workspace(tmp_path / "b", "localhost:5000", 'backend = "vfkit"\n'))
    line = configured(recipe, vfkit).cmdline_for(Arch.AARCH64)
    assert "cloudboot.plan=oci://{{.Gateway}}:5000/cloudboot/default:latest" in line
    assert line.endswith("console=hvc0")
    assert VmSpec.from_config(vfkit).host_services == (("127.0.0.1", 5000),)

    remote = load_config(workspace(tmp_path / "c", "registry.example.com:443"))
    assert "cloudboot.plan=oci://registry.example.com:443/cloudboot/default:latest" in (
        configured(recipe, remote).cmdline_for(Arch.X86_64)
    )
    assert VmSpec.from_config(remote).host_services == ()
    # no workspace: the default embedded registry at the gateway
    assert "oci://{{.Gateway}}:5000/" in recipe.cmdline_for(Arch.X86_64)


def test_the_kexec_loop_asks_the_guest_to_kexec_and_only_under_qemu(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "kernel" / "recipe.toml")
    root = workspace(tmp_path / "a", "127.0.0.1:5123", 'backend = "qemu"\n')
    config = root / "cloudboot.toml"
    config.write_text(config.read_text() + '[watch]\nloop = "kexec"\n')
    words = configured(recipe, load_config(root)).cmdline_for(Arch.X86_64).split()
    assert [w for w in words if w.startswith("cloudboot.exit=")] == ["cloudboot.exit=kexec,reboot"]
    config.write_text(config.read_text().replace('"qemu"', '"vfkit"'))
    with pytest.raises(CloudbootError, match=r"\[watch\].loop = \"kexec\" needs the QEMU"):
        configured(recipe, load_config(root))
    config.write_text(config.read_text().replace('"kexec"', '"host-side"'))
    with pytest.raises(CloudbootError, match=r"loop.*host-side"):
        load_config(root)


def test_bridge_address_from_env_plist_or_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDBOOT_VFKIT_BRIDGE_ADDRESS", raising=False)
    plist = tmp_path / "com.apple.vmnet.plist"
    assert bridge_address("darwin", plist) == "192.168.64.1"  # no plist: vmnet's default
    plist.write_bytes(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
        b"<key>Shared_Net_Address</key><string>192.168.105.1</string></dict></plist>\n"
    )
    assert bridge_address("darwin", plist) == "192.168.105.1"
    assert bridge_address("linux", plist) == "192.168.64.1"
    monkeypatch.setenv("CLOUDBOOT_VFKIT_BRIDGE_ADDRESS", "127.0.64.9")
    assert bridge_address("darwin", plist) == "127.0.64.9"


@pytest.fixture
def loopback_service() -> Iterator[int]:
    """An HTTP service on 127.0.0.1 only, as the embedded registry is."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"registry on loopback"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def fetch(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_forwarder_relays_from_the_bridge_only_and_closes(loopback_service: int) -> None:
    port = free_port()
    forwarder = BridgeForwarder("127.0.64.7", [Forward(port, "127.0.0.1", loopback_service)])
    forwarder.start()
    try:
        assert forwarder.wait_bound(10), forwarder.error
        assert fetch("127.0.64.7", port).endswith(b"registry on loopback")
        with pytest.raises(ConnectionRefusedError):  # bound to the bridge address only
            fetch("127.0.0.1", port)
    finally:
        forwarder.close()
    with pytest.raises(ConnectionRefusedError):  # gone with the VM
        fetch("127.0.64.7", port)


def test_forwarder_waits_for_the_bridge_then_gives_up_clearly(loopback_service: int) -> None:
    """192.0.2.1 (TEST-NET-1) is on no interface here: like a bridge that never appears."""
    forwarder = BridgeForwarder(
        "192.0.2.1", [Forward(free_port(), "127.0.0.1", loopback_service)], bind_timeout_s=1.0
    )
    start = time.monotonic()
    forwarder.start()
    assert not forwarder.wait_bound(5)
    deadline = time.monotonic() + 5
    while forwarder.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert forwarder.error is not None and "cannot listen on 192.0.2.1:" in forwarder.error
    assert time.monotonic() - start >= 1.0  # it retried while the address was missing
    forwarder.close()
