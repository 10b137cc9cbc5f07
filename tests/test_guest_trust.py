"""The trust chain on the agent's whole pass (docs/trust-model.md), attacks tried for real.

The same host harness as tests/test_guest_agent.py (real registry, real disk images, an
efivarfs-like directory); the publisher side is the real ``publisher.push``. Each test
plays the registry attacker (moving a tag, serving an older plan, an unsigned metadata
document) and checks what the guest boots, what it refuses, and that a refusal leaves
NVRAM and the cache ESP's kernels untouched. tests/test_guest_trust_qemu.py boots the
tag-move attack under QEMU.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from guest.agent.console import Console
from guest.agent.floor import FLOOR_PATH
from guest.agent.main import Agent, Paths
from guest.contract import oci
from guest.contract.arch import Arch
from guest.contract.efi import GLOBAL_VARIABLE_GUID
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption
from publisher.localregistry import RunningRegistry
from publisher.push import publish_plan, push_artifact
from publisher.refsign import sign_ref
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from tests.agent_harness import (
    LEASE,
    HostSystem,
    _metadata_server,
    _mtype,
    _plan,
    _run,
    machine,
)
from tests.helpers import new_key, push_manifest, push_plan, sign

__all__ = ["machine"]  # the fixture, imported for the tests below

KERNEL_A, INITRD_A = b"KERNEL-A" * 4096, b"INITRD-A" * 512
KERNEL_B, INITRD_B = b"KERNEL-B" * 4096, b"INITRD-B" * 512


def _boot0001(root: Path) -> bytes | None:
    var = EfiVarStore(root / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    return var.data if var else None


def _fatal(log: str) -> str:
    lines = [line for line in log.splitlines() if "FATAL" in line]
    assert lines, log
    return lines[0]


def _artifact(
    tmp: Path, registry: RunningRegistry, tag: str, kernel: bytes, initrd: bytes, key: object
) -> str:
    (tmp / "k").write_bytes(kernel)
    (tmp / "i").write_bytes(initrd)
    ref = oci.parse_ref(f"{registry.address}/kernels/k:{tag}")
    signer = SigningKey(key) if isinstance(key, ec.EllipticCurvePrivateKey) else None
    return push_artifact(RegistryClient(), ref, "amd64", tmp / "k", tmp / "i", key=signer).digest


def _oci_plan(registry: RunningRegistry) -> str:
    return (
        'default_target = "k"\n'
        f'target "k" {{\n  kernel = "{registry.address}/kernels/k:1"\n'
        '  cmdline = "console=ttyS0 from-plan"\n}\n'
    )


def _staged(root: Path) -> tuple[bytes, bytes]:
    esp = root / "dev/vda1"
    return _mtype(esp, "::/EFI/Linux/k-vmlinuz.efi"), _mtype(esp, "::/EFI/Linux/k-initrd")


def test_pinned_tag_moved_to_another_kernel_boots_the_signed_one(
    machine: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    """The publisher pins the tag's digest in the plan signature; the attacker then moves
    the tag to an unsigned kernel. The guest fetches by the pinned digest: what boots is
    what was signed, and the moved tag's bytes are never read."""
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    first = _artifact(tmp_path, registry, "1", KERNEL_A, INITRD_A, None)
    plan = tmp_path / "plan.hcl"
    plan.write_text(_oci_plan(registry))
    ref = oci.parse_ref(f"{registry.address}/plans/web:latest")
    publish_plan(RegistryClient(), ref, plan, SigningKey(key))
    moved = _artifact(tmp_path, registry, "1", KERNEL_B, INITRD_B, None)
    assert moved != first
    status, log, _ = _run(machine, f"cloudboot.plan={ref} cloudboot.exit=reboot")
    assert status == 0, log
    assert (
        f"artifact {registry.address}/kernels/k:1: pinned by the plan signature to {first}" in log
    )
    assert _staged(machine) == (KERNEL_A, INITRD_A)


def test_unpinned_tag_moved_to_unsigned_kernel_enforce_refuses_warn_says_so(
    machine: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    """A plan signed without pins (what a plain ``cosign sign`` makes) names a kernel by
    tag; the kernel carries its own signature, so enforce boots it. The tag is moved to
    an unsigned kernel: enforce refuses naming the artifact, NVRAM and ESP untouched;
    warn boots it and says it is not verified."""
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    _artifact(tmp_path, registry, "1", KERNEL_A, INITRD_A, key)
    digest = push_plan(registry.url, "plans/web", "latest", _oci_plan(registry).encode())
    sign(registry.url, "plans/web", f"{registry.address}/plans/web", digest, key)
    plan_arg = f"cloudboot.plan={registry.address}/plans/web cloudboot.exit=reboot"
    status, log, _ = _run(machine, plan_arg)
    assert status == 0, log
    assert "own signature verified" in log and _staged(machine) == (KERNEL_A, INITRD_A)
    before = _boot0001(machine)

    _artifact(tmp_path, registry, "1", KERNEL_B, INITRD_B, None)  # the attacker's move
    status, log, system = _run(machine, plan_arg)
    fatal = _fatal(log)
    assert status == 1 and f"artifact {registry.address}/kernels/k:1 is not pinned" in fatal
    assert "not signed" in fatal and not system.rebooted
    assert _boot0001(machine) == before and _staged(machine) == (KERNEL_A, INITRD_A)

    status, log, _ = _run(machine, plan_arg + " cloudboot.cosign=warn")
    assert status == 0, log
    assert f"WARNING: artifact {registry.address}/kernels/k:1: NOT VERIFIED" in log
    assert _staged(machine) == (KERNEL_B, INITRD_B)


def _manifest(registry: RunningRegistry, repo: str, digest: str) -> bytes:
    resp = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{digest}",
        headers={"Accept": oci.MEDIA_MANIFEST},
        timeout=10,
    )
    resp.raise_for_status()
    return resp.content


def test_rollback_to_an_older_signed_plan_is_refused_unless_asked_for(
    machine: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    ref = oci.parse_ref(f"{registry.address}/plans/web:latest")
    plan = tmp_path / "plan.hcl"
    digests = []
    for n in (1, 2):
        plan.write_bytes(_plan(f"console=ttyS0 v{n}"))
        digests.append(publish_plan(RegistryClient(), ref, plan, SigningKey(key)).digest)
    arg = f"cloudboot.plan={ref} cloudboot.exit=reboot"
    status, log, _ = _run(machine, arg)
    assert status == 0 and "v2" in LoadOption.from_bytes(_boot0001(machine) or b"").optional_text()
    floor = json.loads(_mtype(machine / "dev/vda1", "::" + FLOOR_PATH.replace("\\", "/")))
    assert set(floor["floors"]) == {str(ref)}

    # the attacker moves the tag back to v1 (its old signature is still valid)
    v1 = _manifest(registry, "plans/web", digests[0])
    push_manifest(registry.url, "plans/web", "latest", v1, oci.MEDIA_MANIFEST)
    before = _boot0001(machine)
    status, log, system = _run(machine, arg)
    fatal = _fatal(log)
    assert status == 1 and "is older than one already accepted" in fatal and str(ref) in fatal
    assert _boot0001(machine) == before and not system.rebooted

    # signing what the tag points at now is a new publication: fresh, it boots
    assert sign_ref(RegistryClient(), ref, SigningKey(key)).digest == digests[0]
    status, log, _ = _run(machine, arg)
    assert status == 0, log
    assert "v1" in LoadOption.from_bytes(_boot0001(machine) or b"").optional_text()

    # so does publishing v2 again from the checkout (a tag move is a new publication)
    plan.write_bytes(_plan("console=ttyS0 v2"))
    assert publish_plan(RegistryClient(), ref, plan, SigningKey(key)).digest == digests[1]
    status, log, _ = _run(machine, arg)
    assert status == 0 and "v2" in LoadOption.from_bytes(_boot0001(machine) or b"").optional_text()

    # the attacker moves the tag to v1 again; the baked cmdline may roll back on purpose
    push_manifest(registry.url, "plans/web", "latest", v1, oci.MEDIA_MANIFEST)
    status, log, _ = _run(machine, arg)
    assert status == 1 and "older than one already accepted" in _fatal(log)
    status, log, _ = _run(machine, arg + " cloudboot.rollback=1")
    assert status == 0, log
    assert "WARNING: ROLLBACK: plan" in log and "cloudboot.rollback=1" in log
    assert "v1" in LoadOption.from_bytes(_boot0001(machine) or b"").optional_text()


def test_enforce_without_a_key_in_the_image_is_fatal(
    machine: Path, registry: RunningRegistry
) -> None:
    key, _pem = new_key()
    digest = push_plan(registry.url, "plans/web", "latest", _plan())
    sign(registry.url, "plans/web", f"{registry.address}/plans/web", digest, key)
    status, log, _ = _run(machine, f"cloudboot.plan={registry.address}/plans/web")
    assert status == 1 and "enforce but the image has no public key" in _fatal(log)
    assert _boot0001(machine) is None


def test_unsigned_metadata_may_not_set_plan_cmdline_or_debug(
    machine: Path, registry: RunningRegistry
) -> None:
    """A target without a cmdline would take ``cloudboot.cmdline``; from the metadata
    document it is refused (as are debug and the plan), target and DNS are taken."""
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    plan = (
        b'default_target = "debian"\n'
        b'target "debian" {\n  disk {\n    device = "LABEL=debroot"\n'
        b'    kernel = "/vmlinuz"\n  }\n}\n'
        b'target "other" {\n  disk = { device = "/dev/vdb1" }\n}\n'
    )
    digest = push_plan(registry.url, "plans/web", "latest", plan)
    sign(registry.url, "plans/web", f"{registry.address}/plans/web", digest, key)
    evil = {
        "cmdline": "console=ttyS0 systemd.run=/bin/evil",
        "debug": True,
        "plan": f"{registry.address}/plans/evil",
        "rollback": 1,
        "target": "other",
        "dns": "192.0.2.99",
    }
    with _metadata_server(json.dumps({"cloudboot": evil}).encode()) as (url, _seen):
        cmdline = (
            f"cloudboot.plan={registry.address}/plans/web cloudboot.metadata.url={url} "
            "cloudboot.cmdline=console=ttyS0"
        )
        (machine / "proc/cmdline").write_text(cmdline + "\n")
        out = io.StringIO()
        agent = Agent(HostSystem(lease=LEASE), Console([out]), Paths(machine), Arch.X86_64)
        status = agent.run()
    log = out.getvalue()
    assert status == 0, log
    for knob in ("cmdline", "debug", "plan", "rollback"):
        assert f"metadata may not set cloudboot.{knob}" in log
    assert not agent.options.debug and agent.options.plan.endswith("/plans/web")
    option = LoadOption.from_bytes(_boot0001(machine) or b"")
    assert option.description == "cloud-boot other"  # the allowed knob took effect
    assert "systemd.run" not in option.optional_text()
    assert option.optional_text().endswith("console=ttyS0")
    assert (machine / "etc/resolv.conf").read_text() == "nameserver 192.0.2.99\n"


@pytest.mark.parametrize("policy", ["enforce", "warn"])
def test_a_subplan_is_verified_and_pins_its_own_artifacts(
    machine: Path, registry: RunningRegistry, tmp_path: Path, policy: str
) -> None:
    """A subplan is a plan: published and signed on its own, with its own pins."""
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    first = _artifact(tmp_path, registry, "1", KERNEL_A, INITRD_A, None)
    sub, top = tmp_path / "sub.hcl", tmp_path / "top.hcl"
    sub.write_text(_oci_plan(registry))
    top.write_text(
        f'default_target = "s"\ntarget "s" {{\n  subplan = "{registry.address}/plans/sub"\n}}\n'
    )
    client, signer = RegistryClient(), SigningKey(key)
    publish_plan(client, oci.parse_ref(f"{registry.address}/plans/sub:latest"), sub, signer)
    publish_plan(client, oci.parse_ref(f"{registry.address}/plans/top:latest"), top, signer)
    _artifact(tmp_path, registry, "1", KERNEL_B, INITRD_B, None)
    status, log, _ = _run(
        machine, f"cloudboot.plan={registry.address}/plans/top cloudboot.cosign={policy}"
    )
    assert status == 0, log
    assert log.count("plan signature verified") == 2 and f"to {first}" in log
    assert _staged(machine) == (KERNEL_A, INITRD_A)
