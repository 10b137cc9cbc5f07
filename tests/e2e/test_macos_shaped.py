"""The macOS loop, on Linux: `cloudboot up` with ``[vm] backend = "vfkit"``, as a Mac runs it.

What makes it Mac-shaped:
- ``vfkit`` on PATH is the stand-in (tests/vfkit_standin/: vfkit's CLI, REST API, virtio
  console and vmnet NAT, QEMU underneath); cloudboot's own PATH has no QEMU, no apt-get,
  dpkg-deb, mkfs.ext4 or docker-registry (none exists on a Mac with Homebrew);
- the guest's network is vmnet's: it sits on 192.168.64.0/24, its gateway is the bridge
  address, and the host's loopback (where the registry listens) is NOT reachable; the
  guest gets to the registry only through the forwarder `cloudboot up` binds on the bridge
  address while the VM runs (the stand-in's bridge address is 127.0.64.1 on this host);
- the console is hvc0: the agent's and the target's output reach serial.log through the
  virtio console; a guest reboot resets the VM in place (vfkit keeps running).

Then, as a user would: the first target boots, an edit boots the other target, Ctrl-C
cleans up (VM, forwarder, registry). A second test shows the NAT is real: with the
forwarder bound elsewhere the guest cannot reach the registry at all.

The Debian half (kernel, stub, busybox, the guest's Python runtime, the demo disk's ext4)
comes from a "Linux build host" step that runs with the full PATH first. See the module's
``BUILD_HOST`` note for what that step does until the OCI base artifact replaces it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from publisher.localregistry import local_registry
from tests.conftest import REPO
from tests.e2e.harness import CLOUDBOOT, TARGET_UP, LiveLoop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists(), reason="ovmf not installed"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the vfkit stand-in's NAT needs root (netns)"),
]

STANDIN = REPO / "tests" / "vfkit_standin" / "vfkit"
#: Tools a Mac does not have (Homebrew: no formula, or keg-only), hidden from cloudboot.
NOT_ON_A_MAC = ("apt-get", "dpkg-deb", "mkfs.ext4", "docker-registry")
#: The stand-in's bridge address on this host (vmnet's 192.168.64.1 as the guest sees it).
BRIDGE_HOST = "127.0.64.1"
GUEST_BRIDGE = "192.168.64.1"

#: BUILD_HOST: until `cloudboot push base` (the OCI base artifact) is merged, the Debian
#: packages come from the per-user package cache that this step fills with apt-get, and
#: the embedded registry is docker-registry started here; both with the full PATH. The
#: `cloudboot up` under test never runs either tool.


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
        self.registry: object | None = None

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
        if shutil.which("docker-registry", path=self.env["PATH"]) is None and not _own_registry():
            storage = self.root / ".cloudboot" / "registry"
            self._registry_cm = local_registry(
                self.root / "registry-run", host="127.0.0.1", port=self.port, storage=storage
            )
            self.registry = self._registry_cm.__enter__()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.registry is not None:
            self._registry_cm.__exit__(None, None, None)


def _own_registry() -> bool:
    """Whether `cloudboot up`'s embedded registry runs without docker-registry (macbase)."""
    import importlib.util

    return importlib.util.find_spec("publisher.ociserver") is not None


@pytest.fixture
def loop_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ws"


def test_macos_shaped_loop(loop_root: Path) -> None:
    with MacLoop(loop_root) as loop:
        guest_ref = f"oci://{GUEST_BRIDGE}:{loop.port}/cloudboot/default:latest"
        # 1. First boot: firmware -> UKI (console=hvc0) -> agent on the virtio console,
        #    plan over the bridge forwarder -> Boot0001 -> reboot in place -> target alpha.
        up, _ = loop.serial.wait_for(rf"{TARGET_UP} target=alpha .*", alive=loop.alive)
        assert "console=hvc0" in up.group(0)  # the target, on the virtio console too
        first = loop.serial.text()
        assert f"cloudboot.plan rendered: {guest_ref}" in first
        assert "plan signature verified" in first and "Boot0001 = cloud-boot alpha" in first
        started = [e for e in loop.log_events() if e.get("event") == "vm started"]
        assert len(started) == 1, "the reboot into the target stayed in the same vfkit"
        assert loop.vm_pid() == started[0]["pid"]
        assert port_open(BRIDGE_HOST, loop.port), "the forwarder runs while the VM does"

        # 2. Edit the default target: signed, published, restarted with a fresh NVRAM.
        events, pid = len(loop.log_events()), loop.vm_pid()
        edited = loop.edit(loop.plan, 'default_target = "alpha"', 'default_target = "beta"')
        restart = loop.wait_event(
            lambda e: e.get("event") == "vm started" and e.get("reset") is True, after=events
        )
        assert restart["pid"] != pid
        # vfkit truncates serial.log at each launch: this launch's log starts at 0
        _, seen_beta = loop.serial.wait_for(rf"{TARGET_UP} target=beta", timeout=240,
                                            alive=loop.alive)  # fmt: skip
        after = loop.serial.text()
        assert "Boot0001 = cloud-boot beta" in after and "target=alpha" not in after
        print(f"macOS-shaped edit -> target beta running: {seen_beta - edited:.1f} s")
        final_pid = loop.vm_pid()

    assert loop.exit_code == 0, loop.log_path.read_text()[-3000:]
    assert not Path(f"/proc/{final_pid}").exists()  # the vfkit `up` started is gone
    assert not port_open(BRIDGE_HOST, loop.port), "the forwarder is gone with the VM"
    if loop.registry is None:
        assert not loop.registry_up()


def test_guest_reaches_the_registry_only_through_the_bridge(loop_root: Path) -> None:
    """The same loop with the forwarder bound where vmnet's bridge is not: the registry on
    the host's loopback is then out of the guest's reach, as on a Mac."""
    with MacLoop(loop_root, bridge_address="127.0.64.2") as loop:
        match, _ = loop.serial.wait_for(r"^FATAL: .*", alive=loop.alive)
        text = loop.serial.text()
        assert f"{GUEST_BRIDGE}:{loop.port}" in match.group(0), text[-2000:]
        assert TARGET_UP not in text and "Boot0001" not in text
        assert loop.registry_up(), "the registry itself is up, on loopback"
