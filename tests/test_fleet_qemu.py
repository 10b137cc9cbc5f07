"""The guest as fleets use it, booted for real (QEMU TCG + OVMF, the agent's boot.iso).

An Alpine-shaped artifact: `cloudboot push artifact` publishes kernel, initrd, modloop
and apkovl layers to the real docker-registry; a signed plan names the artifact; the
agent stages it and reboots into it. The target (the Debian cloud kernel and a busybox
initrd standing in for Alpine's) prints its /proc/cmdline, a listing of / and the sha256
of /apkovl.tar.gz: the cmdline carries ``modloop=<blob URL>`` (which serves the
modloop's bytes) and ``apkovl=/apkovl.tar.gz``, and the overlay sits at /apkovl.tar.gz,
byte for byte.

LLDP: the guest's NIC sits on a QEMU hub joining user networking (DHCP, the registry) and
a UDP socket netdev the test holds: the test injects a real switch's LLDP frame
(tests/data/lldp) until the boot ends, and reads what the guest sends. A plan whose
default target depends on ``lldp.port_id`` stages the other target, and the guest's own
announcement reaches the wire.

Static ``ip=`` (klibc syntax) baked into a second boot.iso: no DHCP, the lease is the
static address, and the plan is fetched and staged over it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from virt.firmware.efi import bootentry as vf_bootentry

from guest.contract.lldp import parse_frame
from guest.contract.oci import parse_ref
from publisher.localregistry import free_port
from publisher.media.debs import DebCache
from publisher.push import publish_plan
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from tests.helpers import push_plan, sign
from tests.qemu_lab import (
    MARKER as MARKER_DISK,
    OVMF_CODE,
    PLAN,
    Lab,
    _tiny_initrd,
    _vars,
    boot,
    build_iso,
    make_lab,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]
MARKER = "CLOUDBOOT-ALPINE-SHAPED-5e2a"
BIN = Path(sys.executable).parent
DATA = Path(__file__).parent / "data/lldp"


#: Run by the target's init before it prints its cmdline: what upstream's apkovl gives it.
SHOW = (
    "/bin/busybox mount -t proc proc /proc\n"
    "echo LISTING $(/bin/busybox ls /)\n"
    "echo APKOVL $(/bin/busybox sha256sum /apkovl.tar.gz)\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-fleet")) as made:
        yield made


def test_alpine_shaped_artifact_boots_with_modloop_and_apkovl(lab: Lab) -> None:
    debs = DebCache()
    kpkg = debs.kernel_package("linux-image-cloud-amd64", lab.arch)
    busybox = debs.package("busybox-static", lab.arch).root / "bin/busybox"
    work = lab.root / "alpine-files"
    work.mkdir()
    kernel = next((kpkg.root / "boot").glob("vmlinuz-*"))
    (work / "initramfs-virt").write_bytes(_tiny_initrd(busybox, MARKER, SHOW))
    modloop, overlay = os.urandom(300_000), os.urandom(5_000)
    (work / "modloop-virt").write_bytes(modloop)
    (work / "host.apkovl.tar.gz").write_bytes(overlay)
    pushed = subprocess.run(
        [BIN / "cloudboot", "push", "artifact", f"{lab.registry.address}/alpine/virt:3.20",
         "--platform", "linux/amd64", "--kernel", str(kernel), "--initrd", "initramfs-virt",
         "--modloop", "modloop-virt", "--apkovl", "host.apkovl.tar.gz"],
        cwd=work, capture_output=True, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr.decode()
    plan = work / "plan.hcl"
    plan.write_text(
        'default_target = "alpine"\n'
        f'target "alpine" {{\n  index = "10.0.2.2:{lab.registry.port}/alpine/virt:3.20"\n'
        '  cmdline = "console=ttyS0 panic=-1"\n}\n'
    )
    web = parse_ref(f"{lab.registry.address}/plans/web:latest")
    publish_plan(RegistryClient(), web, plan, SigningKey(lab.key))  # type: ignore[arg-type]

    log, _vars_fd = boot(lab, "alpine", MARKER, timeout=300)
    lines = [line for line in log.splitlines() if line.startswith(MARKER)]
    assert lines, log[-3000:]
    words = lines[-1].split()[1:]
    assert words[:3] == [r"initrd=\EFI\Linux\alpine-initrd", "console=ttyS0", "panic=-1"], words
    modloop_urls = [w.removeprefix("modloop=") for w in words if w.startswith("modloop=")]
    assert len(modloop_urls) == 1 and "apkovl=/apkovl.tar.gz" in words, words
    url = modloop_urls[0]
    assert url.startswith(f"http://10.0.2.2:{lab.registry.port}/v2/alpine/virt/blobs/sha256:")
    # the URL as the target sees it; from the host the registry is on loopback
    served = requests.get(url.replace("10.0.2.2", "127.0.0.1"), timeout=10).content
    assert served == modloop
    listing = next(line for line in log.splitlines() if line.startswith("LISTING "))
    assert "apkovl.tar.gz" in listing.split(), listing
    sums = next(line for line in log.splitlines() if line.startswith("APKOVL "))
    assert sums.split()[1] == hashlib.sha256(overlay).hexdigest(), sums


LLDP_PLAN = """default_target = lldp.port_id == "port-001" ? "rack" : "debian"
target "debian" {
  cmdline = "console=ttyS0 panic=-1 picked=debian"
  disk { device = "LABEL=targetroot" }
}
target "rack" {
  cmdline = "console=ttyS0 panic=-1 picked=rack-${lldp.system_name}"
  disk { device = "LABEL=targetroot" }
}
"""


class Wire:
    """The test's end of the UDP socket netdev: injects frames, collects the guest's."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ours.bind(("127.0.0.1", 0))
        self.ours.settimeout(0.2)
        self.qemu_port = free_port()
        self.heard: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def netdev(self) -> tuple[str, ...]:
        ours = self.ours.getsockname()[1]
        return (
            "-netdev", "hubport,id=h0,hubid=0", "-device", "virtio-net-pci,netdev=h0",
            "-netdev", "user,id=u0", "-netdev", "hubport,id=h1,hubid=0,netdev=u0",
            "-netdev", f"socket,id=s0,udp=127.0.0.1:{ours},localaddr=127.0.0.1:{self.qemu_port}",
            "-netdev", "hubport,id=h2,hubid=0,netdev=s0",
        )  # fmt: skip

    def _run(self) -> None:
        while not self.stop.is_set():
            self.ours.sendto(self.frame, ("127.0.0.1", self.qemu_port))
            try:
                while True:
                    data = self.ours.recv(65536)
                    if data[12:14] == b"\x88\xcc":
                        self.heard.append(data)
            except TimeoutError:
                pass

    def __enter__(self) -> Wire:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.ours.close()


def test_a_plan_branching_on_lldp_port_id_picks_the_other_target(lab: Lab) -> None:
    plan = lab.root / "lldp-plan.hcl"
    plan.write_text(LLDP_PLAN)
    web = parse_ref(f"{lab.registry.address}/plans/web:latest")
    publish_plan(RegistryClient(), web, plan, SigningKey(lab.key))  # type: ignore[arg-type]
    switch = bytes.fromhex("".join((DATA / "siemens-scalance-x212.hex").read_text().split()))
    with Wire(switch) as wire:
        log, vars_fd = boot(lab, "lldp", MARKER_DISK, timeout=300, net=wire.netdev)
    assert "lldp neighbour: chassis=switch1 port=port-001 system='Switch1'" in log, log[-3000:]
    entry = vf_bootentry.BootEntry(data=_vars(vars_fd)["Boot0001"])
    assert str(entry.title) == "cloud-boot rack"
    kernel_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert kernel_cmdline.endswith("console=ttyS0 panic=-1 picked=rack-Switch1"), kernel_cmdline
    # the guest announced itself on the wire: its MAC as chassis, its NIC as port
    ours = [parse_frame(f) for f in wire.heard if f[6:12] != switch[6:12]]
    assert ours and ours[0].facts.system_name == "cloud-boot-amd64", ours
    assert ours[0].facts.port_id == "eth0" and ours[0].chassis_subtype == 4


def test_static_ip_boots_without_dhcp(lab: Lab) -> None:
    static_root = lab.root / "static"
    static_root.mkdir()
    shutil.copy(lab.root / "cosign.pub", static_root / "cosign.pub")
    cmdline = (
        f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{lab.registry.port}/plans/web "
        "cloudboot.insecure=1 console=ttyS0 cloudboot.lldp=0 "
        "ip=10.0.2.77::10.0.2.2:255.255.255.0:static-node:eth0:off:10.0.2.3"
    )
    static_lab = dataclasses.replace(lab, iso=build_iso(static_root, "guest-agent", cmdline))
    digest = push_plan(lab.registry.url, "plans/web", "latest", PLAN)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    log, vars_fd = boot(static_lab, "static-ip", MARKER_DISK, timeout=300)
    assert "static ip= on eth0" in log and "DHCP on" not in log, log[-3000:]
    assert "lease 10.0.2.77/24 on eth0 gw 10.0.2.2 dns 10.0.2.3" in log, log[-3000:]
    assert str(vf_bootentry.BootEntry(data=_vars(vars_fd)["Boot0001"]).title) == "cloud-boot debian"
