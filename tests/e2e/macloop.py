"""The macOS-shaped live-reload loop: `cloudboot up` with the vfkit backend, as a Mac runs it.

Shared by tests/e2e/test_macos_shaped.py and bench/edit_to_target.py, so both measure the
same loop. What makes it Mac-shaped (README.md "macOS"):
- ``vfkit`` on PATH is the stand-in (tests/vfkit_standin/: vfkit's CLI, REST API, virtio
  console and vmnet NAT, QEMU underneath); cloudboot's own PATH has no QEMU, no apt-get,
  dpkg-deb, mkfs.ext4 or docker-registry (none exists on a Mac with Homebrew);
- the guest's network is vmnet's: it sits on 192.168.64.0/24, its gateway is the bridge
  address, and the host's loopback (where the registry listens) is NOT reachable; the
  guest gets to the registry only through the forwarder `cloudboot up` binds on the bridge
  address while the VM runs (the stand-in's bridge address is 127.0.64.1 on this host).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from guest.contract.arch import Arch
from tests.conftest import REPO
from tests.e2e.harness import CLOUDBOOT, LiveLoop

STANDIN = REPO / "tests" / "vfkit_standin" / "vfkit"
#: Tools a Mac does not have (Homebrew: no formula, or keg-only), hidden from cloudboot.
NOT_ON_A_MAC = ("apt-get", "dpkg-deb", "mkfs.ext4", "docker-registry")
#: The stand-in's bridge address on this host (vmnet's 192.168.64.1 as the guest sees it).
BRIDGE_HOST = "127.0.64.1"
GUEST_BRIDGE = "192.168.64.1"

#: BUILD_HOST: until `cloudboot push base` (the OCI base artifact) is merged, the Debian
#: packages come from the per-user package cache, which this step fills with apt-get and
#: dpkg-deb (a scratch `cloudboot build`), and the demo disk is made with mkfs.ext4; both
#: with the full PATH. The `cloudboot up` under test runs neither tool; its registry is
#: its own embedded one (the builtin server: docker-registry is not on its PATH).


def mac_shaped_path(root: Path) -> str:
    """A PATH with the stand-in as ``vfkit`` and every other tool except the Mac-less ones
    and QEMU (a Mac runs vfkit; only the stand-in uses QEMU, by absolute path)."""
    vfkit_dir, tools = root / "vfkit-bin", root / "bin"
    vfkit_dir.mkdir(parents=True)
    tools.mkdir()
    (vfkit_dir / "vfkit").symlink_to(STANDIN)
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            name = entry.name
            if name in NOT_ON_A_MAC or name.startswith("qemu-system-"):
                continue
            if (tools / name).exists() or not os.access(entry.path, os.X_OK):
                continue
            (tools / name).symlink_to(entry.path)
    return f"{vfkit_dir}{os.pathsep}{tools}"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


class MacLoop(LiveLoop):
    """`cloudboot up` with the vfkit backend under a Mac-shaped PATH."""

    def __init__(self, root: Path, *, bridge_address: str = BRIDGE_HOST) -> None:
        super().__init__(root, arch=Arch.host().value)
        qemu = shutil.which(f"qemu-system-{Arch.host().value}")
        assert qemu, "the stand-in needs QEMU"
        self.env.update(
            PATH=mac_shaped_path(root.parent / "mac-path"),
            VFKIT_STANDIN_QEMU=qemu,
            VFKIT_STANDIN_BRIDGE_HOST=BRIDGE_HOST,
            VFKIT_STANDIN_BRIDGE_PORTS=str(self.port),
            CLOUDBOOT_VFKIT_BRIDGE_ADDRESS=bridge_address,
        )

    def create_workspace(self) -> None:
        super().create_workspace()
        config = self.root / "cloudboot.toml"
        config.write_text(config.read_text().replace("[vm]\n", '[vm]\nbackend = "vfkit"\n', 1))
        self.build_host()

    def build_host(self) -> None:
        """The Linux build host's part (BUILD_HOST above), with the full PATH."""
        from publisher.config import load_config
        from publisher.demodisk import ensure_demo_disk
        from watcher.cli.demo import demo_disk_path

        config = load_config(self.root)
        scratch = self.root.parent / "build-host"
        subprocess.run([CLOUDBOOT, "init", str(scratch)], check=True, capture_output=True)
        subprocess.run([CLOUDBOOT, "-C", str(scratch), "build", "--no-sign"], check=True,
                       capture_output=True)  # fmt: skip
        ensure_demo_disk(demo_disk_path(config), config.vm_arch())

    def __enter__(self) -> MacLoop:
        self.create_workspace()
        self.start()
        return self
