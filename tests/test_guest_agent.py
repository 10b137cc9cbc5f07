"""The agent's whole pass on the host: a directory tree as the guest's root, real disk
images (sgdisk GPT, mkfs.vfat ESP, mkfs.ext4 -d target), a real registry, an efivarfs-like
directory. Only the machine edge (mounts, DHCP, reboot) is swapped: the ESP is written
with mtools instead of a vfat mount, and fsck.vfat / mtype check what landed there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest.contract import gpt
from guest.contract.efi import GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption
from publisher.localregistry import RunningRegistry
from publisher.run import run
from tests.agent_harness import (
    INITRD,
    KERNEL,
    LEASE,
    _metadata_server,
    _mtype,
    _plan,
    _run,
    machine,
)
from tests.helpers import new_key, push_plan, sign

__all__ = ["machine"]  # the fixture, imported for the tests below


def test_signed_plan_stages_disk_target_and_writes_boot0001(
    machine: Path, registry: RunningRegistry
) -> None:
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    digest = push_plan(registry.url, "plans/web", "latest", _plan())
    sign(registry.url, "plans/web", f"{registry.address}/plans/web", digest, key)
    status, log, system = _run(
        machine,
        f"console=ttyS0 cloudboot.plan=oci://{registry.address}/plans/web cloudboot.exit=reboot",
    )
    assert status == 0, log
    assert system.rebooted and system.esp_opened == ["vda1", "vda1"]  # floor read, staging
    assert "plan signature verified" in log
    for step in ("init", "network", "fetch", "verify", "read", "write", "nvram"):
        assert f"step {step} " in log
    assert all(line.startswith(("cloud-boot: ", " ")) for line in log.splitlines())
    # the ESP: files byte-identical, filesystem clean per fsck.vfat
    esp = machine / "dev/vda1"
    assert _mtype(esp, "::/EFI/Linux/debian-vmlinuz.efi") == KERNEL
    assert _mtype(esp, "::/EFI/Linux/debian-initrd") == INITRD
    run(["fsck.vfat", "-n", esp])
    # NVRAM: Boot0001 HD()+File() on the cache ESP, BootOrder 0001 first
    store = EfiVarStore(machine / "sys/firmware/efi/efivars")
    boot = store.read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None and boot.attributes == 7
    option = LoadOption.from_bytes(boot.data)
    table = gpt.read_gpt((machine / "dev/vda").read_bytes()[: 34 * 512])
    part = table.partitions[0]
    assert option.description == "cloud-boot debian"
    assert str(option.device_path) == (
        f"HD(1,GPT,{part.unique_guid},{part.first_lba:#x},{part.size_sectors:#x})"
        "/\\EFI\\Linux\\debian-vmlinuz.efi"
    )
    assert option.optional_text() == r"initrd=\EFI\Linux\debian-initrd console=ttyS0 marker"
    order = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    assert order is not None and bootorder.parse(order.data) == [1, 0, 2]


@pytest.mark.parametrize("tamper", ["unsigned", "other-key"])
def test_enforce_refuses_unsigned_or_foreign_plans_and_leaves_nvram(
    machine: Path, registry: RunningRegistry, tamper: str
) -> None:
    _key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    digest = push_plan(registry.url, "plans/web", "latest", _plan())
    if tamper == "other-key":
        other, _ = new_key()
        sign(registry.url, "plans/web", f"{registry.address}/plans/web", digest, other)
    efivars = machine / "sys/firmware/efi/efivars"
    before = {p.name: p.read_bytes() for p in efivars.iterdir()}
    status, log, system = _run(machine, f"cloudboot.plan={registry.address}/plans/web")
    assert status == 1 and not system.rebooted
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert len(fatal) == 1
    assert "plan signature check failed" in fatal[0]
    assert ("not signed" if tamper == "unsigned" else "verifies") in fatal[0]
    assert "hint: " in log and "NVRAM was not touched" in log
    assert {p.name: p.read_bytes() for p in efivars.iterdir()} == before
    assert system.esp_opened == []


def test_warn_policy_boots_an_unsigned_plan_with_a_warning(
    machine: Path, registry: RunningRegistry
) -> None:
    _key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    push_plan(registry.url, "plans/web", "latest", _plan())
    status, log, _system = _run(
        machine,
        f"cloudboot.plan={registry.address}/plans/web cloudboot.cosign=warn cloudboot.target=other",
    )
    assert status == 0, log
    assert "WARNING: plan signature check failed (cloudboot.cosign=warn)" in log
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None and LoadOption.from_bytes(boot.data).description == "cloud-boot other"


def test_embedded_plan_and_missing_cache_disk(machine: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    for child in (machine / "sys/block/vda").iterdir():
        (child / "partition").unlink()
        child.rmdir()
    (machine / "sys/block/vda").rmdir()
    status, log, _system = _run(machine, "console=ttyS0")
    assert status == 1
    assert "using the embedded plan" in log
    assert "FATAL: GPT: no cache ESP found" in log
    assert "cloudboot cache-disk" in log
    assert not (machine / "sys/firmware/efi/efivars" / f"Boot0001-{GLOBAL_VARIABLE_GUID}").exists()


def test_subplan_chain(machine: Path, registry: RunningRegistry) -> None:
    push_plan(registry.url, "plans/leaf", "latest", _plan("leaf"))
    top = (f'target "chain" {{\n  subplan = "{registry.address}/plans/leaf"\n}}\n').encode()
    push_plan(registry.url, "plans/top", "latest", top)
    status, log, _system = _run(
        machine, f"cloudboot.plan={registry.address}/plans/top cloudboot.cosign=off"
    )
    assert status == 0, log
    assert "chains to subplan" in log
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    assert LoadOption.from_bytes(boot.data).optional_text() == (
        r"initrd=\EFI\Linux\debian-initrd leaf"
    )


def _templated_plan() -> bytes:
    return (
        b'dns = ["192.0.2.10"]\n'
        b'default_target = "debian"\n'
        b'target "debian" {\n'
        b'  cmdline = ["ip={{.IPSpec}}", "site=${meta.site}"]\n'
        b'  disk { device = "LABEL=debroot" }\n'
        b"}\n"
        b'target "other" {\n'
        b'  cmdline = "host={{.Hostname}} mac={{.MAC}} ns={{.DNS}}"\n'
        b'  disk = { device = "/dev/vdb1" }\n'
        b"}\n"
    )


def test_metadata_overrides_knobs_feeds_meta_and_wins_dns(
    machine: Path, registry: RunningRegistry
) -> None:
    _key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    push_plan(registry.url, "plans/web", "latest", _templated_plan())
    doc = json.dumps(
        {"site": "lab-7", "cloudboot": {"target": "other", "dns": "192.0.2.99", "cosign": "off"}}
    ).encode()
    with _metadata_server(doc) as (url, seen):
        cmdline = (
            f"cloudboot.plan={registry.address}/plans/web cloudboot.cosign=warn "
            f"cloudboot.target=debian cloudboot.dns=192.0.2.1 cloudboot.metadata.url={url} "
            "cloudboot.metadata.token=s3cret-token"
        )
        status, log, _system = _run(machine, cmdline, lease=LEASE)
    assert status == 0, log
    assert seen == ["Bearer s3cret-token"] and "s3cret" not in log
    assert "metadata: cloudboot.target='other' (overrides the cmdline)" in log
    assert "metadata may not set cloudboot.cosign" in log  # warn -> off refused
    assert "WARNING: plan signature check failed (cloudboot.cosign=warn)" in log
    # metadata dns beats the plan's, which beats the cmdline's
    assert (machine / "etc/resolv.conf").read_text() == "nameserver 192.0.2.99\n"
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    option = LoadOption.from_bytes(boot.data)
    assert option.description == "cloud-boot other"
    assert option.optional_text() == r"initrd=\EFI\Linux\other-initrd host=g1 mac= ns=10.0.2.3"


def test_plan_dns_beats_cmdline_and_templates_render_into_boot0001(
    machine: Path, registry: RunningRegistry
) -> None:
    push_plan(registry.url, "plans/web", "latest", _templated_plan())
    doc = b'{"site": "lab-7"}'
    with _metadata_server(doc) as (url, _seen):
        status, log, _system = _run(
            machine,
            f"cloudboot.plan={registry.address}/plans/web cloudboot.cosign=off "
            f"cloudboot.dns=192.0.2.1 cloudboot.metadata.url={url}",
            lease=LEASE,
        )
    assert status == 0, log
    assert "dns 192.0.2.1 (from cmdline)" in log and "dns 192.0.2.10 (from plan)" in log
    assert (machine / "etc/resolv.conf").read_text() == "nameserver 192.0.2.10\n"
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    assert LoadOption.from_bytes(boot.data).optional_text() == (
        r"initrd=\EFI\Linux\debian-initrd "
        "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3 site=lab-7"
    )


def test_unknown_template_field_is_fatal_and_leaves_nvram(machine: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(
        b'target "t" {\n  cmdline = "ip={{.IPAddr}}"\n  disk { device = "LABEL=debroot" }\n}\n'
    )
    efivars = machine / "sys/firmware/efi/efivars"
    before = {p.name: p.read_bytes() for p in efivars.iterdir()}
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 1
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "unknown template field .IPAddr at offset 3" in fatal[0], log
    assert "/etc/cloud-boot/plan.hcl:1:" in fatal[0]
    assert {p.name: p.read_bytes() for p in efivars.iterdir()} == before
    assert system.esp_opened == []


def test_unreachable_metadata_is_a_warning(machine: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    status, log, _system = _run(
        machine, "cloudboot.metadata.url=http://127.0.0.1:9/md", lease=LEASE
    )
    assert status == 0, log
    assert "WARNING: metadata: http://127.0.0.1:9/md: cannot fetch" in log
