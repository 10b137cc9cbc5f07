"""An Alpine-shaped artifact booted for real (QEMU TCG + OVMF, the agent's boot.iso).

`cloudboot push artifact` publishes kernel, initrd, modloop and apkovl layers to the real
docker-registry; a signed plan names the artifact; the agent stages it and reboots into
it. The target (the Debian cloud kernel and a busybox initrd standing in for Alpine's)
prints its /proc/cmdline, a listing of / and the sha256 of /apkovl.tar.gz: the cmdline
carries ``modloop=<blob URL>`` (which serves the modloop's bytes) and
``apkovl=/apkovl.tar.gz``, and the overlay sits at /apkovl.tar.gz, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from guest.contract.oci import parse_ref
from publisher.media.debs import DebCache
from publisher.push import publish_plan
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from tests.qemu_lab import OVMF_CODE, Lab, _tiny_initrd, boot, make_lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]
MARKER = "CLOUDBOOT-ALPINE-SHAPED-5e2a"
BIN = Path(sys.executable).parent


#: Run by the target's init before it prints its cmdline: what upstream's apkovl gives it.
SHOW = (
    "/bin/busybox mount -t proc proc /proc\n"
    "echo LISTING $(/bin/busybox ls /)\n"
    "echo APKOVL $(/bin/busybox sha256sum /apkovl.tar.gz)\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-layers")) as made:
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
