"""The guest's network-derived inputs: the udhcpc lease, resolv.conf by precedence
(cmdline < plan < metadata), the metadata document's overrides, and Go-template cmdlines.

The lease text is produced by running our real udhcpc script under busybox with the
variables busybox udhcpc exports (its `ip` applet replaced by a recorder), so the
script and the parser are tested against each other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from guest.agent import template
from guest.agent.lease import Lease, LeaseError, choose_dns, parse_lease, parse_servers, resolv_conf
from guest.agent.metadata import MetadataError, apply, parse_metadata
from guest.contract.arch import Arch
from guest.contract.plan import DiskSource, OciSource
from publisher.media.debs import DebCache
from publisher.media.guestpack import UDHCPC_SCRIPT

LEASE = Lease(
    interface="eth0",
    ip="10.0.2.15",
    netmask="255.255.255.0",
    prefix=24,
    gateway="10.0.2.2",
    dns=("10.0.2.3", "192.0.2.1", "192.0.2.2"),
    hostname="guest",
    mac="52:54:00:12:34:56",
)


def _script(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The udhcpc script, run by the packed busybox, with its paths moved under
    ``tmp_path`` (root, and a fake /sys/class/net) and its ``ip`` calls recorded, never
    run: (script, root, calls)."""
    busybox = DebCache().package("busybox-static", Arch.host()).root / "bin/busybox"
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "net").mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    recorder = tmp_path / "bb"
    recorder.write_text(
        f'#!/bin/sh\ncase "$1" in ip) echo "$@" >> {calls} ;;\n*) exec {busybox} "$@" ;; esac\n'
    )
    recorder.chmod(0o755)
    script = tmp_path / "udhcpc.script"
    body = UDHCPC_SCRIPT.replace("bb=/bin/busybox", f"bb={recorder}")
    body = body.replace("/etc/resolv.conf", f"{root}/resolv.conf")
    body = body.replace("/run/cloud-boot", f"{root}/run")
    body = body.replace("/sys/class/net", f"{root}/net")
    script.write_text(body.replace("#!/bin/busybox sh", f"#!{busybox} sh"))
    script.chmod(0o755)
    return script, root, calls


ENV = {"interface": "eth0", "ip": "10.0.2.15", "subnet": "255.255.255.0", "mask": "24",
       "router": "10.0.2.2", "dns": "10.0.2.3 192.0.2.1", "hostname": "guest",
       "PATH": "/usr/bin:/bin"}  # fmt: skip


def test_udhcpc_script_leaves_a_lease_the_agent_parses(tmp_path: Path) -> None:
    script, root, calls = _script(tmp_path)
    subprocess.run([script, "bound"], env=ENV, check=True, capture_output=True)
    lines = calls.read_text().splitlines()
    # a first lease: nothing to flush, the lease's directory made
    assert lines == ["ip addr add 10.0.2.15/24 dev eth0",
                     "ip route add default via 10.0.2.2 dev eth0"]  # fmt: skip
    assert (root / "resolv.conf").read_text() == "nameserver 10.0.2.3\nnameserver 192.0.2.1\n"
    lease = parse_lease((root / "run/lease.env").read_text(), mac="52:54:00:12:34:56\n")
    assert lease == Lease("eth0", "10.0.2.15", "255.255.255.0", 24, "10.0.2.2",
                          ("10.0.2.3", "192.0.2.1"), "guest", "", "52:54:00:12:34:56")  # fmt: skip
    assert lease.ipspec == "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3:192.0.2.1"
    assert lease.cidr == "10.0.2.15/24"
    # a second lease replaces the first one's address
    subprocess.run([script, "renew"], env=ENV, check=True, capture_output=True)
    assert calls.read_text().splitlines()[2] == "ip addr flush dev eth0"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("0x1003", []), ("0x1002", ["ip link set eth0 up"]), (None, ["ip link set eth0 up"])],
)
def test_udhcpc_deconfig_raises_the_link_only_when_it_is_down(
    tmp_path: Path, flags: str | None, expected: list[str]
) -> None:
    """The agent raises the NIC before udhcpc starts, so deconfig (run before every
    DHCP round) then starts no process; a link that is down, or no flags file, still
    gets `ip link set up`."""
    script, root, calls = _script(tmp_path)
    if flags is not None:
        (root / "net/eth0").mkdir()
        (root / "net/eth0/flags").write_text(flags + "\n")
    subprocess.run([script, "deconfig"], env=ENV, check=True, capture_output=True)
    assert calls.read_text().splitlines() == expected


def test_lease_errors_name_the_key() -> None:
    with pytest.raises(LeaseError, match=r"lease\.env: the lease has no ip"):
        parse_lease("interface=eth0\n", where="lease.env")
    with pytest.raises(LeaseError, match="router='nope' is not an IP address"):
        parse_lease("interface=eth0\nip=10.0.0.2\nrouter=nope\n")
    lease = parse_lease("interface=eth0\nip=10.0.0.2\nmask=16\n")
    assert (lease.netmask, lease.prefix, lease.gateway, lease.dns) == ("255.255.0.0", 16, "", ())
    assert lease.ipspec == "10.0.0.2:::255.255.0.0::eth0:off"


def test_dns_precedence_cmdline_plan_metadata() -> None:
    assert choose_dns(None, (), None) is None
    assert choose_dns("1.1.1.1;9.9.9.9", (), None) == (("1.1.1.1", "9.9.9.9"), "cmdline")
    assert choose_dns(None, ("192.0.2.53",), None) == (("192.0.2.53",), "plan")
    assert choose_dns("1.1.1.1", ("192.0.2.53",), None) == (("1.1.1.1",), "cmdline")
    assert choose_dns("1.1.1.1", ("192.0.2.53",), "2001:db8::53,8.8.8.8") == (
        ("2001:db8::53", "8.8.8.8"),
        "metadata",
    )
    with pytest.raises(LeaseError, match=r"/proc/cmdline cloudboot.dns: DNS server 'x' is not"):
        choose_dns("1.1.1.1,x", (), None)
    assert parse_servers(["10.0.0.1", " "], where="plan dns") == ("10.0.0.1",)
    assert resolv_conf(["10.0.0.1", "::1"]) == "nameserver 10.0.0.1\nnameserver ::1\n"


def test_metadata_overrides_and_refusals() -> None:
    doc = json.dumps({
        "site": {"rack": "r7"},
        "cloudboot": {"target": "rescue", "menu": False, "dns": ["192.0.2.53", "192.0.2.54"],
                      "menu.timeout": 3, "cosign": "off", "insecure": "1",
                      "metadata.url": "http://evil", "plan": "evil.example/plan",
                      "cmdline": "systemd.run=/evil", "debug": 1, "rollback": 1,
                      "exit": "shell", "quiet": 1},
    }).encode()  # fmt: skip
    params = {"cloudboot.target": "web", "cloudboot.cosign": "warn", "console": "ttyS0"}
    md = parse_metadata(doc, params, where="http://md")
    assert md.document["site"] == {"rack": "r7"}
    assert md.overrides == {
        "cloudboot.target": "rescue",
        "cloudboot.menu": "0",
        "cloudboot.dns": "192.0.2.53,192.0.2.54",
        "cloudboot.menu.timeout": "3",
    }
    assert set(md.refused) == {
        "cloudboot.cosign", "cloudboot.insecure", "cloudboot.metadata.url", "cloudboot.plan",
        "cloudboot.cmdline", "cloudboot.debug", "cloudboot.rollback", "cloudboot.exit",
        "cloudboot.quiet",
    }  # fmt: skip
    merged = apply(params, md)
    assert merged["cloudboot.target"] == "rescue" and merged["cloudboot.cosign"] == "warn"
    # a stronger policy is fine
    strict = parse_metadata(b'{"cloudboot": {"cosign": "enforce"}}', params, where="u")
    assert strict.overrides == {"cloudboot.cosign": "enforce"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1]", "http://md: a JSON object is needed, got list"),
        (b"{", "http://md: not JSON"),
        (b'{"cloudboot": 3}', '"cloudboot" must be an object'),
        (b'{"cloudboot": {"target": {"x": 1}}}', "cloudboot.target: a string, number or"),
    ],
)
def test_metadata_errors(data: bytes, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_metadata(data, {}, where="http://md")


OCI = OciSource(index="10.0.2.2:5000/boot/alpine:3.20")


def test_template_fields_from_the_lease_and_the_registry() -> None:
    fields = template.target_fields(LEASE, OCI, insecure=True)  # cloudboot.insecure=1
    text = (
        "console=ttyS0 ip={{.IPSpec}} addr={{ .CIDR }} gw={{.Gateway}} if={{.Iface}} "
        "ns={{index .DNSAll 1}} all={{.DNSAll}} host={{.Hostname}} mac={{.MAC}} "
        "repo={{.RegistryBase}}/boot/alpine modloop={{.ModloopURL}}"
    )
    assert template.render(text, fields) == (
        "console=ttyS0 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3:192.0.2.1 "
        "addr=10.0.2.15/24 gw=10.0.2.2 if=eth0 ns=192.0.2.1 all=[10.0.2.3 192.0.2.1 192.0.2.2] "
        "host=guest mac=52:54:00:12:34:56 repo=http://10.0.2.2:5000/v2/boot/alpine modloop="
    )
    assert template.render("a {{- .IP -}} b", fields) == "a10.0.2.15b"
    assert template.render("no templates here {x}", {}) == "no templates here {x}"
    remote = template.target_fields(None, OciSource(kernel="reg.example/b/k:1"), insecure=False)
    assert template.render("{{.RegistryScheme}}://{{.Registry}}", remote) == "https://reg.example"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ip={{.IPSPec}}", r"plan.hcl:3:3 cmdline: unknown template field .IPSPec at offset 3"),
        ("x {{.IP}", "unterminated template action at offset 2"),
        ("{{range .DNSAll}}{{.}}{{end}}", r"unsupported template action \{\{range .DNSAll\}\}"),
        ("{{index .DNSAll 7}}", r"\.DNSAll has 3 entries"),
        ("{{index .IP 0}}", r"\.IP is not a list"),
    ],
)
def test_template_errors_name_the_field_and_offset(text: str, message: str) -> None:
    fields = template.target_fields(LEASE, OCI, insecure=True)
    with pytest.raises(template.TemplateError, match=message):
        template.render(text, fields, where="plan.hcl:3:3 cmdline")


def test_template_fields_unknown_on_this_boot() -> None:
    disk = DiskSource(device="LABEL=root")
    fields = template.target_fields(None, disk, insecure=False)
    with pytest.raises(template.TemplateError, match=r"\.IPSpec at offset 3: no DHCP lease"):
        template.render("ip={{.IPSpec}}", fields)
    with pytest.raises(template.TemplateError, match=r"\.Registry at offset 0: no OCI source"):
        template.render("{{.Registry}}", fields)
