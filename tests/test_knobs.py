"""Every knob upstream's code parses (docs/knobs.md): typed by ``Options``, bad values an
error naming the key; ``ip=`` in klibc syntax; ``cloudboot.image`` booted through the
agent's whole pass on the host harness (real registry, real disk images)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from guest.agent.cmdline import CmdlineError, Options, knob_warnings, parse_cmdline
from guest.agent.disks.cmdline import disk_source
from guest.agent.ipconfig import Dhcp, IpConfigError, StaticIp, parse_ip
from guest.agent.lease import parse_lease
from guest.contract.efi import GLOBAL_VARIABLE_GUID
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption
from guest.contract.oci import parse_ref
from publisher.localregistry import RunningRegistry
from publisher.push import push_artifact
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from tests.agent_harness import INITRD, KERNEL, _mtype, _run, machine
from tests.helpers import new_key

__all__ = ["machine"]
REPO = Path(__file__).resolve().parent.parent


def test_upstream_knobs_are_typed() -> None:
    options = Options.from_text(
        "cloudboot.image=r/a:1 cloudboot.keymap=fr cloudboot.lldp=1 cloudboot.lldp.wait=1m30s "
        "cloudboot.lldp.tx=0 cloudboot.lldp.name=rack7-node3 cloudboot.exit=kexec "
        "ip=10.1.2.3::10.1.2.1:255.255.255.0:node3:eth1:off:10.1.2.53"
    )
    assert (options.image, options.keymap, options.exit) == ("r/a:1", "fr", "kexec")
    assert (options.lldp, options.lldp_wait, options.lldp_tx) == (True, 90.0, False)
    assert options.lldp_name == "rack7-node3"
    assert options.ip == StaticIp(
        "10.1.2.3", "255.255.255.0", 24, "10.1.2.1", "node3", "eth1", ("10.1.2.53",)
    )
    assert len(knob_warnings(options)) == 1  # the keymap is read, not acted on
    assert Options.from_text("cloudboot.exit=kexec,reboot").exit == "kexec,reboot"
    defaults = Options.from_text("")
    assert (defaults.exit, defaults.lldp, defaults.lldp_wait, defaults.lldp_tx) == (
        "reboot",
        True,
        10.0,
        True,
    )
    assert defaults.ip is None and knob_warnings(defaults) == []
    assert Options.from_text("cloudboot.lldp=0 cloudboot.lldp.wait=0").lldp_wait == 0.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cloudboot.exit=poweroff", "cloudboot.exit"),  # upstream: unknown exit is an error
        ("cloudboot.exit=reboot,reboot", "cloudboot.exit"),
        ("cloudboot.lldp=maybe", "cloudboot.lldp"),
        ("cloudboot.lldp.tx=2", "cloudboot.lldp.tx"),
        ("cloudboot.lldp.wait=soon", "cloudboot.lldp.wait"),
        ("ip=10.0.0.300::10.0.0.1:255.255.255.0", "ip="),
        ("ip=10.0.0.3::10.0.0.1:255.0.255.0", "ip="),
        ("ip=10.0.0.3::10.0.0.1", "ip="),
        ("ip=off", "ip="),
        ("ip=10.0.0.3::10.0.0.1:255.255.255.0:h:eth0:dhcp", "ip="),
        ("ip=10.0.0.3::10.0.0.1:255.255.255.0:h:eth0:carrier-pigeon", "ip="),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(CloudbootErrorLike) as info:
        Options.from_text(text)
    assert key in str(info.value)


CloudbootErrorLike = (CmdlineError, IpConfigError)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("dhcp", Dhcp()),
        ("on", Dhcp()),
        (":::::eth1:dhcp", Dhcp("eth1")),
        (
            "192.168.7.20:192.168.7.1:192.168.7.1:255.255.254.0:web1:enp0s3:none:1.1.1.1:9.9.9.9",
            StaticIp(
                "192.168.7.20",
                "255.255.254.0",
                23,
                "192.168.7.1",
                "web1",
                "enp0s3",
                ("1.1.1.1", "9.9.9.9"),
            ),
        ),
        (
            "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",
            StaticIp("10.0.2.15", "255.255.255.0", 24, "10.0.2.2", "", "eth0"),
        ),
        ("10.9.0.5:::255.0.0.0", StaticIp("10.9.0.5", "255.0.0.0", 8)),
    ],
)
def test_klibc_ip(spec: str, expected: StaticIp | Dhcp) -> None:
    assert parse_ip(spec) == expected


def test_static_ip_feeds_the_dhcp_script_into_the_same_lease(tmp_path: Path) -> None:
    """The udhcpc script the guest carries, run (by sh) with the static values: the lease
    file it writes reads back as the same address (link commands go to a stub busybox)."""
    from publisher.media.guestpack import UDHCPC_SCRIPT

    static = parse_ip("10.1.2.3::10.1.2.1:255.255.255.0:node3:eth1:off:10.1.2.53:10.1.2.54")
    assert isinstance(static, StaticIp)
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    stub = root / "bin/busybox"
    stub.write_text(
        f'#!/bin/sh\n[ "$1" = mkdir ] && shift && exec mkdir "$@"\necho "$@" >> {tmp_path}/calls\n'
    )
    stub.chmod(0o755)
    script = UDHCPC_SCRIPT.replace("/bin/busybox", str(stub)).replace("/run/", f"{root}/run/")
    script = script.replace("/etc/resolv.conf", f"{root}/resolv.conf")
    (root / "script").write_text(script)

    env = {**os.environ, **static.script_env("eth1")}
    subprocess.run(["sh", root / "script", "bound"], env=env, check=True)
    lease = parse_lease((root / "run/cloud-boot/lease.env").read_text())
    assert (lease.interface, lease.ip, lease.prefix, lease.gateway) == (
        "eth1",
        "10.1.2.3",
        24,
        "10.1.2.1",
    )
    assert lease.dns == ("10.1.2.53", "10.1.2.54") and lease.hostname == "node3"
    assert lease.ipspec == "10.1.2.3::10.1.2.1:255.255.255.0::eth1:off:10.1.2.53:10.1.2.54"
    calls = (tmp_path / "calls").read_text()
    assert "ip addr add 10.1.2.3/24 dev eth1" in calls
    assert "ip route add default via 10.1.2.1 dev eth1" in calls
    assert (root / "resolv.conf").read_text() == "nameserver 10.1.2.53\nnameserver 10.1.2.54\n"


def test_image_knob_boots_a_one_target_plan(machine: Path, registry: RunningRegistry) -> None:
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    kernel, initrd = machine.parent / "vmlinuz", machine.parent / "initrd"
    kernel.write_bytes(os.urandom(100_000))
    initrd.write_bytes(os.urandom(20_000))
    ref = parse_ref(f"{registry.address}/kernels/legacy:1")
    push_artifact(RegistryClient(), ref, "amd64", kernel, initrd, cmdline="console=ttyS0 legacy",
                  key=SigningKey(key))  # type: ignore[arg-type]  # fmt: skip
    status, log, _system = _run(
        machine, f"cloudboot.image={registry.address}/kernels/legacy:1 cloudboot.exit=reboot"
    )
    assert status == 0, log
    assert "target 'legacy-image' (oci)" in log
    assert (
        _mtype(machine / "dev/vda1", "::/EFI/Linux/legacy-image-vmlinuz.efi") == kernel.read_bytes()
    )
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    option = LoadOption.from_bytes(boot.data).optional_text()
    assert option == r"initrd=\EFI\Linux\legacy-image-initrd console=ttyS0 legacy"


def test_an_unknown_exit_is_fatal_before_anything_is_touched(machine: Path) -> None:
    status, log, system = _run(machine, "cloudboot.exit=halt cloudboot.plan=oci://r/p")
    assert status == 1 and "FATAL" in log and "cloudboot.exit='halt'" in log
    assert not system.rebooted and system.esp_opened == []


def test_knobs_doc_lists_every_knob_upstream_parses() -> None:
    """docs/knobs.md has a row per knob upstream's code parses."""
    spec = (REPO / "docs/knobs.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)`", spec, re.MULTILINE))
    upstream = ["plan", "target", "insecure", "cosign", "menu", "menu.timeout", "menu.prompt",
                "dns", "metadata.url", "metadata.token", "cmdline", "exit", "image", "keymap",
                "lldp", "lldp.wait", "lldp.tx", "lldp.name", "disk", "disk.fs", "disk.kernel",
                "disk.initrd", "disk.luks-passphrase", "openstack.auth-url",
                "openstack.app-cred-id", "openstack.app-cred-secret"]  # fmt: skip
    missing = [k for k in upstream if f"cloudboot.{k}" not in rows]
    missing += [k for k in ("rd.cloudboot.user", "rd.cloudboot.pass", "ip") if k not in rows]
    assert missing == []


def test_disk_mode_boots_the_disks_kernel_without_network_or_plan(machine: Path) -> None:
    status, log, _system = _run(
        machine,
        "cloudboot.disk=LABEL=debroot cloudboot.disk.kernel=/vmlinuz cloudboot.exit=reboot "
        'cloudboot.cmdline="console=ttyS0 disk-mode" cloudboot.plan=oci://unreachable.invalid/p',
    )
    assert status == 0, log
    assert "target 'disk' (disk)" in log and "step network" not in log
    assert _mtype(machine / "dev/vda1", "::/EFI/Linux/disk-vmlinuz.efi") == KERNEL
    assert _mtype(machine / "dev/vda1", "::/EFI/Linux/disk-initrd") == INITRD
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    option = LoadOption.from_bytes(boot.data).optional_text()
    assert option == r"initrd=\EFI\Linux\disk-initrd console=ttyS0 disk-mode"
    raw = parse_cmdline("cloudboot.disk=/dev/vdb1 cloudboot.disk.luks-passphrase=s3cret")
    disk = disk_source(raw)
    assert disk.device == "/dev/vdb1" and "s3cret" not in repr(disk)
