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

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from guest.contract.arch import Arch
from publisher.localregistry import local_registry
from tests.e2e.harness import CLOUDBOOT, LiveLoop
from tests.helpers import REPO

STANDIN = REPO / "tests" / "vfkit_standin" / "vfkit"
#: Tools a Mac does not have (Homebrew: no formula, or keg-only), hidden from cloudboot.
NOT_ON_A_MAC = ("apt-get", "dpkg-deb", "mkfs.ext4", "docker-registry")
#: The stand-in's bridge address on this host (vmnet's 192.168.64.1 as the guest sees it).
BRIDGE_HOST = "127.0.64.1"
GUEST_BRIDGE = "192.168.64.1"

#: BUILD_HOST: what a Linux host (a CI job, a build host) does once for Macs, with the full
#: PATH: `cloudboot push base` publishes every Debian-derived boot input (kernel, stub,
#: busybox, the guest's Python runtime, the demo disk) as a signed OCI artifact into the
#: registry storage the workspace's embedded registry serves, and the workspace's recipe
#: pins it (``[base] oci = "...@sha256:..."``). The `cloudboot up` under test then runs with
#: an empty package cache ($XDG_CACHE_HOME) and none of apt-get, dpkg-deb, mkfs.ext4,
#: docker-registry or QEMU on its PATH: everything comes from the artifact.


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

    def __init__(self, root: Path, *, bridge_address: str = BRIDGE_HOST, cpus: int = 1) -> None:
        super().__init__(root, arch=Arch.host().value, cpus=cpus)
        qemu = shutil.which(f"qemu-system-{Arch.host().value}")
        assert qemu, "the stand-in needs QEMU"
        self.env.update(
            PATH=mac_shaped_path(root.parent / "mac-path"),
            VFKIT_STANDIN_QEMU=qemu,
            VFKIT_STANDIN_BRIDGE_HOST=BRIDGE_HOST,
            VFKIT_STANDIN_BRIDGE_PORTS=str(self.port),
            CLOUDBOOT_VFKIT_BRIDGE_ADDRESS=bridge_address,
            XDG_CACHE_HOME=str(root.parent / "empty-cache"),  # no debs, no base cached
            # what the firmware printed, every launch: hvc0 shows nothing before Linux
            VFKIT_STANDIN_FIRMWARE_LOG=str(self.firmware_log),
        )

    @property
    def firmware_log(self) -> Path:
        return self.root.parent / "firmware.log"

    def create_workspace(self) -> None:
        super().create_workspace()
        config = self.root / "cloudboot.toml"
        config.write_text(config.read_text().replace("[vm]\n", '[vm]\nbackend = "vfkit"\n', 1))
        self.build_host()

    def build_host(self) -> None:
        """The Linux build host's part (BUILD_HOST above), with the full PATH."""
        from publisher.config import load_config
        from publisher.signing import write_key_pair

        config = load_config(self.root)
        write_key_pair(config.signing.key, config.signing.public_key,
                       self.env["COSIGN_PASSWORD"].encode())  # fmt: skip
        ref = f"127.0.0.1:{self.port}/cloudboot/base:bookworm"
        with local_registry(self.root.parent / "build-host-registry", port=self.port,
                            storage=config.registry.storage, implementation="builtin"):  # fmt: skip
            proc = subprocess.run(
                [CLOUDBOOT, "-C", str(self.root), "push", "base", ref, "--json"],
                capture_output=True, text=True,
                env={**os.environ, "COSIGN_PASSWORD": self.env["COSIGN_PASSWORD"]},
            )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        digest = json.loads(proc.stdout)["digest"]
        pinned = f"127.0.0.1:{self.port}/cloudboot/base@{digest}"
        with self.recipe.open("a") as recipe:
            recipe.write(f'\n[base]\noci = "{pinned}"\n')

    def __enter__(self) -> MacLoop:
        self.create_workspace()
        self.start()
        return self

    def evidence(self) -> str:
        if not self.firmware_log.exists():
            return ""
        return "firmware.log tail:\n" + self.firmware_log.read_text(errors="replace")[-3000:]
