"""The agent's whole pass on the host: a directory tree as the guest's root, real disk
images (sgdisk GPT, mkfs.vfat ESP, mkfs.ext4 -d target), a real registry, an efivarfs-like
directory. Only the machine edge (mounts, DHCP, reboot) is swapped: the ESP is written
with mtools instead of a vfat mount, and fsck.vfat / mtype check what landed there."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

from guest.agent.console import Console
from guest.agent.machine import Paths
from guest.agent.main import Agent
from guest.agent.stage import LOADER_GUID
from guest.contract import gpt
from guest.contract.arch import Arch
from guest.contract.efi import GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption
from publisher.localregistry import RunningRegistry
from publisher.run import run
from tests.agent_harness import (
    INITRD,
    KERNEL,
    LEASE,
    MIB,
    HostSystem,
    _disk,
    _metadata_server,
    _mtype,
    _plan,
    _put_marker,
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


def test_kexec_starts_loading_a_disk_target_before_its_files_are_hashed(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cloudboot.exit=kexec: kexec(8) gets the target as soon as its bytes and command line
    are known; the stamp's hash of the disk target's files (0.16 s for 15 MB under TCG)
    runs beside it, not before it."""
    from guest.agent import stage
    from guest.agent.kexec import Staged

    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())
    order: list[str] = []
    hash_files = stage.disk_content

    def hashed(*files: stage.FileData | None) -> str:
        order.append("hash")
        return hash_files(*files)  # type: ignore[arg-type]

    monkeypatch.setattr(stage, "disk_content", hashed)
    (machine / "proc/cmdline").write_text("console=ttyS0 cloudboot.exit=kexec\n")
    system = HostSystem()
    agent = Agent(system, Console([io.StringIO()]), Paths(machine), Arch.X86_64)

    def preload(staged: Staged) -> None:
        order.append("load")
        assert staged.cmdline.endswith("console=ttyS0 marker")

    agent.preload_exit = preload
    assert agent.run() == 0
    assert order == ["load", "hash"]


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
    # metadata dns beats the cmdline's, which beats the plan's
    assert (machine / "etc/resolv.conf").read_text() == "nameserver 192.0.2.99\n"
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    option = LoadOption.from_bytes(boot.data)
    assert option.description == "cloud-boot other"
    assert option.optional_text() == r"initrd=\EFI\Linux\other-initrd host=g1 mac= ns=10.0.2.3"


def test_cmdline_dns_beats_plan_and_templates_render_into_boot0001(
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
    # plan < baked cloudboot.dns < metadata, as upstream (docs/wire-formats.md §5.1)
    assert "dns 192.0.2.1 (from cmdline)" in log and "(from plan)" not in log
    assert (machine / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n"
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


def test_metadata_url_secrets_never_reach_the_console(machine: Path) -> None:
    """Userinfo and the query (where a metadata token often travels) are cut from every line
    the agent prints about the URL: the fetch error and the parse error."""
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan("quiet"))
    status, log, _system = _run(
        machine, "cloudboot.metadata.url=http://u:pw-1@127.0.0.1:9/md?token=tk-1", lease=LEASE
    )
    assert status == 0, log
    assert "WARNING: metadata: http://127.0.0.1:9/md: cannot fetch" in log
    assert "pw-1" not in log and "tk-1" not in log
    with _metadata_server(b"not json") as (url, _seen):
        status, log, _system = _run(
            machine, f"cloudboot.metadata.url={url}?sig=tk-2#frag-3", lease=LEASE
        )
    assert status == 0, log
    assert f"WARNING: metadata: {url}: not JSON" in log
    assert "tk-2" not in log and "frag-3" not in log


def _efivars_snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "sys/firmware/efi/efivars").iterdir()}


def _fatal(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert lines, log
    return lines[0]


def test_a_second_disk_with_the_target_label_is_an_error_naming_both(
    machine: Path, tmp_path: Path
) -> None:
    """A USB stick labelled like the root disk: it used to win (sda sorts before vdb)."""
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())
    tree = tmp_path / "stick"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/vmlinuz-6.6.6-evil").write_bytes(b"MZ evil")
    stick = tmp_path / "stick.ext4"
    run(["mkfs.ext4", "-q", "-F", "-L", "debroot", "-d", tree, stick, "16M"])
    _disk(machine, "sda", [("8300", "usb", 16)], {1: stick})
    before = _efivars_snapshot(machine)
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 1
    assert "'LABEL=debroot' matches sda1 and vdb1: refusing to guess" in _fatal(log)
    assert _efivars_snapshot(machine) == before and system.esp_opened == []


def _named_esp(root: Path, tmp_path: Path, name: str, *, marker: bool = True) -> gpt.Gpt:
    esp = tmp_path / f"{name}.fat"
    with open(esp, "wb") as f:
        f.truncate(40 * MIB)
    run(["mkfs.vfat", "-F", "32", "-n", "CBCACHE", esp])
    if marker:
        _put_marker(esp)
    return _disk(root, name, [("ef00", "cloud-boot-cache", 40)], {1: esp})


def test_two_cache_esps_are_an_error_naming_both(machine: Path, tmp_path: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())
    _named_esp(machine, tmp_path, "sdb")
    before = _efivars_snapshot(machine)
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 1
    assert "ESPs named 'cloud-boot-cache' on sdb1 and vda1: refusing to guess" in _fatal(log)
    assert _efivars_snapshot(machine) == before and system.esp_opened == []


def test_the_disk_the_uki_came_from_never_receives_kernels(machine: Path, tmp_path: Path) -> None:
    """The stub's LoaderDevicePartUUID names the boot disk's ESP: a cache-named ESP there is
    left out, so the real cache disk is chosen without ambiguity."""
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())
    boot = _named_esp(machine, tmp_path, "sdb")
    booted = str(boot.partitions[0].unique_guid).upper()
    EfiVarStore(machine / "sys/firmware/efi/efivars").write(
        "LoaderDevicePartUUID", LOADER_GUID, 6, (booted + "\0").encode("utf-16-le")
    )
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 0, log
    assert system.esp_opened == ["vda1"]


def test_a_cache_esp_without_the_marker_receives_nothing(machine: Path, tmp_path: Path) -> None:
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())
    for p in (machine / "sys/block").iterdir():
        if p.name == "vda":
            shutil.rmtree(p)
    (machine / "dev/vda").unlink()
    (machine / "dev/vda1").unlink()
    _named_esp(machine, tmp_path, "vda", marker=False)
    before = _efivars_snapshot(machine)
    status, log, _system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 1
    assert r"no \EFI\cloud-boot-cache on it: not a disk made by `cloudboot cache-disk`" in _fatal(
        log
    )
    assert _efivars_snapshot(machine) == before
    assert run(["mdir", "-b", "-i", machine / "dev/vda1", "::/"], check=False).stdout == b""


def _secure_boot_machine(machine: Path, tmp_path: Path, kernel: bytes) -> None:
    """SecureBoot=1 in efivars, and the target disk's kernel replaced by ``kernel``."""
    EfiVarStore(machine / "sys/firmware/efi/efivars").write(
        "SecureBoot", GLOBAL_VARIABLE_GUID, 6, b"\x01"
    )
    tree = tmp_path / "sbtree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/vmlinuz-6.1.0-28-amd64").write_bytes(kernel)
    (tree / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-28-amd64")
    fs = machine / "dev/vdb1"
    fs.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", "debroot", "-d", tree, fs, "16M"])
    (machine / "etc/cloud-boot/plan.hcl").write_bytes(_plan())


SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")  # some real PE image


def test_secure_boot_refuses_an_unsigned_kernel_before_anything_is_written(
    machine: Path, tmp_path: Path
) -> None:
    """The path chosen for staged kernels under Secure Boot: the firmware verifies them
    against db; the agent refuses at once one with no signature at all (a PE image, but
    unsigned), instead of pointing Boot0001 at an image the firmware will refuse."""
    _secure_boot_machine(machine, tmp_path, SYSTEMD_BOOT.read_bytes())
    before = _efivars_snapshot(machine)
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 1
    assert "Secure Boot is on and this kernel carries no Authenticode signature" in _fatal(log)
    assert _efivars_snapshot(machine) == before and system.esp_opened == []


def test_secure_boot_stages_a_signed_kernel(machine: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "30", "-subj", "/CN=cloudboot test db"])  # fmt: skip
    signed = tmp_path / "signed.efi"
    run(["sbsign", "--key", key, "--cert", cert, "--output", signed, SYSTEMD_BOOT])
    _secure_boot_machine(machine, tmp_path, signed.read_bytes())
    status, log, system = _run(machine, "console=ttyS0", lease=LEASE)
    assert status == 0, log
    assert system.esp_opened == ["vda1"]
    assert _mtype(machine / "dev/vda1", "::/EFI/Linux/debian-vmlinuz.efi") == signed.read_bytes()


def test_plan_ref_names_the_dhcp_gateway(machine: Path, registry: RunningRegistry) -> None:
    """The baked ``oci://{{.Gateway}}:PORT/...`` (README, "macOS"): the guest fills in the
    host as its lease shows it, 10.0.2.2 under QEMU, the vmnet bridge under vfkit. Here the
    "gateway" is loopback, where the test registry listens."""
    push_plan(registry.url, "plans/web", "latest", _plan())
    port = registry.address.rpartition(":")[2]
    lease = dataclasses.replace(LEASE, gateway="127.0.0.1")
    templated = f"cloudboot.plan=oci://{{{{.Gateway}}}}:{port}/plans/web cloudboot.cosign=off"
    status, log, system = _run(machine, templated, lease=lease)
    assert status == 0, log
    assert f"cloudboot.plan rendered: oci://127.0.0.1:{port}/plans/web" in log
    assert system.rebooted

    # No lease, no gateway: a clear error, nothing staged.
    efivars = machine / "sys/firmware/efi/efivars"
    before = {p.name: p.read_bytes() for p in efivars.iterdir()}
    status, log, system = _run(machine, templated, lease=None)
    assert status == 1
    assert "cloudboot.plan: template field .Gateway at offset 6: no DHCP lease" in log, log
    assert {p.name: p.read_bytes() for p in efivars.iterdir()} == before
