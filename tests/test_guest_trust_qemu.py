"""The tag-move attack booted for real (QEMU TCG + OVMF, the agent's boot.iso).

A signed plan names a kernel artifact by tag; the registry attacker moves the tag to
another, unsigned kernel/initrd (a tiny initrd printing its own marker):

- the publisher pinned the tag's digest in the plan signature: enforce boots the signed
  kernel, the moved tag's bytes never boot;
- a plan signed without pins (a plain ``cosign sign``), the kernel signed on its own:
  enforce refuses with a FATAL naming the artifact and no cloud-boot entry in NVRAM;
- the same under ``cloudboot.cosign=warn`` (a second boot.iso): it boots the moved
  kernel and says on the console that the artifact is not verified.

Also booted: a rollback refused across an NVRAM reset (the floor on the cache disk), and an
unsigned metadata document that may not set the kernel command line, debug or the plan.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from virt.firmware.efi import bootentry as vf_bootentry

from guest.contract.gpt import SECTOR, read_gpt
from guest.contract.oci import MEDIA_MANIFEST, parse_ref
from publisher.media.cachedisk import ensure_cache_disk
from publisher.media.debs import DebCache
from publisher.push import publish_plan, push_artifact
from publisher.registry import RegistryClient
from publisher.run import run
from publisher.signing import SigningKey
from tests.agent_harness import _metadata_server
from tests.helpers import push_manifest, push_plan, sign
from tests.qemu_lab import (
    MARKER,
    OVMF_CODE,
    Lab,
    _tiny_initrd,
    _vars,
    boot,
    build_iso,
    make_lab,
    plan_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]
SIGNED, MOVED = "CLOUDBOOT-TRUST-SIGNED-3c1e", "CLOUDBOOT-TRUST-MOVED-3c1e"


@dataclasses.dataclass
class TrustLab:
    lab: Lab
    warn_iso: Path
    kernel: Path
    initrds: dict[str, Path]


@pytest.fixture(scope="module")
def trust_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustLab]:
    root = tmp_path_factory.mktemp("qemu-trust")
    with make_lab(root) as lab:
        warn_root = root / "warn"
        warn_root.mkdir()
        shutil.copy(root / "cosign.pub", warn_root / "cosign.pub")
        cmdline = (
            f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{lab.registry.port}"
            "/plans/web cloudboot.insecure=1 cloudboot.cosign=warn console=ttyS0"
        )
        warn_iso = build_iso(warn_root, "guest-agent", cmdline)
        debs = DebCache()
        kpkg = debs.kernel_package("linux-image-cloud-amd64", lab.arch)
        busybox = debs.package("busybox-static", lab.arch).root / "bin/busybox"
        initrds = {}
        for marker in (SIGNED, MOVED):
            initrds[marker] = root / f"{marker}.img"
            initrds[marker].write_bytes(_tiny_initrd(busybox, marker))
        kernel = next((kpkg.root / "boot").glob("vmlinuz-*"))
        yield TrustLab(lab, warn_iso, kernel, initrds)


def _push_kernel(t: TrustLab, marker: str, *, signed: bool) -> str:
    ref = parse_ref(f"{t.lab.registry.address}/kernels/linux:1")
    key = SigningKey(t.lab.key) if signed else None  # type: ignore[arg-type]
    return push_artifact(
        RegistryClient(), ref, "amd64", t.kernel, t.initrds[marker], key=key
    ).digest


def _plan(t: TrustLab) -> bytes:
    return (
        'default_target = "linux"\n'
        f'target "linux" {{\n  kernel = "10.0.2.2:{t.lab.registry.port}/kernels/linux:1"\n'
        '  cmdline = "console=ttyS0 panic=-1"\n}\n'
    ).encode()


def _cloudboot_entries(vars_fd: Path) -> list[str]:
    titles = [
        str(vf_bootentry.BootEntry(data=data).title)
        for name, data in _vars(vars_fd).items()
        if name.startswith("Boot") and name[4:].isalnum() and len(name) == 8
    ]
    return [t for t in titles if t.startswith("cloud-boot")]


def test_tag_moved_to_an_unsigned_kernel(trust_lab: TrustLab) -> None:
    t, lab = trust_lab, trust_lab.lab
    artifact = f"10.0.2.2:{lab.registry.port}/kernels/linux:1"
    # 1. published by cloudboot: the tag's digest is pinned in the plan signature
    signed_digest = _push_kernel(t, SIGNED, signed=True)
    plan_file = lab.root / "plan.hcl"
    plan_file.write_bytes(_plan(t))
    web = parse_ref(f"{lab.registry.address}/plans/web:latest")
    publish_plan(RegistryClient(), web, plan_file, SigningKey(lab.key))  # type: ignore[arg-type]
    _push_kernel(t, MOVED, signed=False)  # the attacker moves the tag
    log, vars_fd = boot(lab, "pinned", "CLOUDBOOT-TRUST-", timeout=300)
    assert f"artifact {artifact}: pinned by the plan signature to {signed_digest}" in log, log[
        -3000:
    ]
    assert SIGNED in log and MOVED not in log, log[-3000:]
    assert _cloudboot_entries(vars_fd) == ["cloud-boot linux"]

    # 2. a plan signed without pins; the kernel carries its own signature, then is moved
    _push_kernel(t, SIGNED, signed=True)
    digest = push_plan(lab.registry.url, "plans/web", "latest", _plan(t) + b"# unpinned\n")
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    _push_kernel(t, MOVED, signed=False)
    log, vars_fd = boot(lab, "enforce", "FATAL")
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and f"artifact {artifact} is not pinned" in fatal[0], log[-3000:]
    assert "not signed" in fatal[0] and MOVED not in log and SIGNED not in log
    assert _cloudboot_entries(vars_fd) == []  # NVRAM untouched
    assert _vars(vars_fd)["BootOrder"][:2] == b"\x00\x00"

    # 3. the same registry state under cloudboot.cosign=warn: boots, and says so
    warn_lab = dataclasses.replace(lab, iso=t.warn_iso)
    log, vars_fd = boot(warn_lab, "warn-boot", "CLOUDBOOT-TRUST-", timeout=300)
    assert f"WARNING: artifact {artifact}: NOT VERIFIED" in log, log[-3000:]
    assert MOVED in log and SIGNED not in log
    assert _cloudboot_entries(vars_fd) == ["cloud-boot linux"]


def _floor_file(cache: Path) -> dict[str, object]:
    """``\\cloudboot\\floor.json`` read off the cache disk's ESP with mtools."""
    (esp,) = read_gpt(cache.read_bytes()[: 34 * SECTOR]).partitions
    out = run(["mtype", "-i", f"{cache}@@{esp.first_lba * SECTOR}", "::/cloudboot/floor.json"])
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_rollback_refused_across_an_nvram_reset(trust_lab: TrustLab) -> None:
    """Plan v2 is accepted (the floor lands on the cache ESP); the attacker moves the tag
    back to v1, still validly signed; the next boot starts from fresh NVRAM (the dev loop's
    reset) with the same cache disk, and refuses v1 with NVRAM left untouched."""
    lab = trust_lab.lab
    web = parse_ref(f"{lab.registry.address}/plans/web:latest")
    plan_file = lab.root / "rollback.hcl"
    digests = []
    for version in (1, 2):
        plan_file.write_bytes(plan_for(lab.arch).replace(b"panic=-1", f"v{version}".encode()))
        result = publish_plan(RegistryClient(), web, plan_file, SigningKey(lab.key))  # type: ignore[arg-type]
        digests.append(result.digest)
    cache = lab.root / "rollback-cache.raw"
    ensure_cache_disk(cache, 64)
    log, vars_fd = boot(lab, "rollback-v2", MARKER, cache=cache)
    assert MARKER in log, log[-3000:]
    target_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert target_cmdline.endswith("console=ttyS0 v2")
    assert _cloudboot_entries(vars_fd) == ["cloud-boot debian"]
    floor = _floor_file(cache)
    guest_ref = f"10.0.2.2:{lab.registry.port}/plans/web:latest"  # the plan as the guest names it
    assert floor["floors"] == {guest_ref: floor["floors"][guest_ref]}  # type: ignore[index]

    manifest = requests.get(
        f"{lab.registry.url}/v2/plans/web/manifests/{digests[0]}",
        headers={"Accept": MEDIA_MANIFEST},
        timeout=10,
    ).content
    push_manifest(lab.registry.url, "plans/web", "latest", manifest, MEDIA_MANIFEST)
    log, vars_fd = boot(lab, "rollback-v1", "FATAL", cache=cache)
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "is older than one already accepted" in fatal[0], log[-3000:]
    assert _cloudboot_entries(vars_fd) == []


def test_unsigned_metadata_cannot_set_the_cmdline_or_debug(trust_lab: TrustLab) -> None:
    """The image bakes ``cloudboot.cmdline=console=ttyS0`` and a metadata URL; the document
    (plain HTTP, as a link-local service would serve it) asks for another kernel command
    line, a debug shell and another plan. The guest refuses those, says so, and the target
    kernel boots with the baked command line."""
    lab = trust_lab.lab
    plan = (
        b'default_target = "debian"\ntarget "debian" {\n  disk { device = "LABEL=targetroot" }\n}\n'
    )
    digest = push_plan(lab.registry.url, "plans/md", "latest", plan)
    sign(lab.registry.url, "plans/md", f"{lab.registry.address}/plans/md", digest, lab.key)  # type: ignore[arg-type]
    evil = {"cloudboot": {"cmdline": "console=ttyS0 systemd.run=/bin/evil", "debug": 1,
                          "plan": f"10.0.2.2:{lab.registry.port}/plans/web"}}  # fmt: skip
    with _metadata_server(json.dumps(evil).encode()) as (url, seen):
        port = url.rsplit(":", 1)[1].split("/", 1)[0]
        root = lab.root / "metadata"
        root.mkdir()
        shutil.copy(lab.root / "cosign.pub", root / "cosign.pub")
        cmdline = (
            f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{lab.registry.port}/plans/md"
            f" cloudboot.insecure=1 cloudboot.metadata.url=http://10.0.2.2:{port}/md"
            " cloudboot.cmdline=console=ttyS0 console=ttyS0"
        )
        md_lab = dataclasses.replace(lab, iso=build_iso(root, "guest-agent", cmdline))
        log, vars_fd = boot(md_lab, "metadata-boot", MARKER)
    assert seen, "the guest never fetched the metadata document"
    for knob in ("cmdline", "debug", "plan"):
        assert f"metadata may not set cloudboot.{knob}" in log, log[-3000:]
    assert MARKER in log, log[-3000:]
    target_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert target_cmdline.endswith(r"initrd=\EFI\Linux\debian-initrd console=ttyS0")
    assert "systemd.run" not in target_cmdline
    assert _cloudboot_entries(vars_fd) == ["cloud-boot debian"]
