"""LLDP: the pure parser on a real switch's frame (tests/data/lldp/README.md) and on
hostile bytes; our own announcement read back; a real AF_PACKET listen and send on the
loopback interface; the agent's pass evaluating a plan that branches on
``lldp.port_id`` with the facts a listener heard."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest.agent.cmdline import Options
from guest.agent.console import Console
from guest.agent.lldp import Listener, facts, send, start
from guest.agent.machine import Paths
from guest.agent.main import Agent
from guest.contract.arch import Arch
from guest.contract.efi import GLOBAL_VARIABLE_GUID
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption
from guest.contract.errors import FormatError
from guest.contract.lldp import (
    MAX_LLDPDU,
    Neighbour,
    build_lldpdu,
    parse_frame,
    parse_lldpdu,
    tlvs,
)
from guest.contract.plan import Lldp
from publisher.localregistry import RunningRegistry
from tests.agent_harness import LEASE, HostSystem, machine
from tests.helpers import new_key, push_plan, sign

__all__ = ["machine"]

DATA = Path(__file__).parent / "data/lldp"


@pytest.fixture
def lo_to_ourselves() -> Iterator[None]:
    """LLDP on the loopback interface, with no other test sending there meanwhile.

    Every packet socket on ``lo`` hears every frame sent on it, whichever process sends
    it: with two xdist workers, a test that expects silence heard the switch frames
    another test was sending (CI of ddf3aca). A lock file all workers share serializes
    the tests that send or listen on ``lo``."""
    path = Path(tempfile.gettempdir()) / "cloudboot-tests-lldp-lo.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _frame(name: str) -> bytes:
    return bytes.fromhex("".join((DATA / name).read_text().split()))


def test_a_real_switch_frame() -> None:
    assert parse_frame(_frame("siemens-scalance-x212.hex")) == Neighbour(
        Lldp(
            available=True,
            chassis_id="switch1",
            port_id="port-001",
            system_name="Switch1",
            system_desc="Siemens, SIMATIC NET, SCALANCE X212-2, 6GK5 212-2BB00-2AA3, HW: 7, "
            "FW: V4.02",
            port_desc="Siemens, SIMATIC NET, Ethernet Switch Port 01",
            mgmt_addr="141.81.0.190",
        ),
        ttl=20,
        chassis_subtype=7,
        port_subtype=7,
    )


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">H", kind << 9 | len(value)) + value


def test_mac_ids_ipv6_management_and_vlan_tag() -> None:
    pdu = (
        _tlv(1, b"\x04" + bytes.fromhex("525400abcdef"))
        + _tlv(2, b"\x03" + bytes.fromhex("0a0b0c0d0e0f"))
        + _tlv(3, b"\x00\x78")
        + _tlv(127, b"\x00\x80\xc2\x01\x00\x0a")  # 802.1 port VLAN: skipped
        + _tlv(8, bytes([17, 2]) + bytes.fromhex("20010db8000000000000000000000001") + b"\x02")
        + _tlv(0, b"")
        + b"trailing padding is ignored"
    )
    tagged = bytes(12) + b"\x81\x00\x00\x0a\x88\xcc" + pdu
    got = parse_frame(tagged)
    assert (got.facts.chassis_id, got.facts.port_id, got.ttl) == (
        "52:54:00:ab:cd:ef",
        "0a:0b:0c:0d:0e:0f",
        120,
    )
    assert got.facts.mgmt_addr == "2001:db8::1"


def test_our_announcement_reads_back() -> None:
    pdu = build_lldpdu(bytes.fromhex("525400123456"), "eth0", "cloud-boot-amd64", "cloud-boot")
    assert parse_lldpdu(pdu) == Neighbour(
        Lldp(True, "52:54:00:12:34:56", "eth0", "cloud-boot-amd64", "cloud-boot"),
        ttl=120,
        chassis_subtype=4,
        port_subtype=5,
    )
    assert [kind for kind, _ in tlvs(pdu)] == [1, 2, 3, 5, 6]  # mandatory TLVs first


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_tlv(1, b"\x07abc")[:-1], "TLV type 1 at byte 0 says 4 bytes, 3 left"),
        (_tlv(5, b"x" * 300) * 6, f"more than {MAX_LLDPDU}"),
    ],
)
def test_hostile_bytes_are_errors(payload: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_lldpdu(payload)


def test_odd_but_harmless_bytes() -> None:
    # bad UTF-8, a one-byte ID, an unknown management subtype: no exception, no fact
    got = parse_lldpdu(_tlv(5, b"\xffsw") + _tlv(2, b"\x05") + _tlv(8, b"\x05\x09abcd"))
    assert (got.facts.system_name, got.facts.port_id, got.facts.mgmt_addr) == ("\ufffdsw", "", "")
    with pytest.raises(FormatError, match="not LLDP"):
        parse_frame(bytes(12) + b"\x08\x00" + os.urandom(40))
    assert facts(None) == Lldp()
    assert facts(got).available is True


def test_listen_and_send_on_a_real_packet_socket(lo_to_ourselves: None) -> None:
    """AF_PACKET on the loopback interface (root): what the guest does on its NIC."""
    if os.geteuid() != 0:
        pytest.skip("packet sockets need root")
    listener, notes = start(
        "lo", Options.from_text("cloudboot.lldp.wait=20s cloudboot.lldp.tx=0"), "amd64"
    )
    assert listener is not None and notes == ["lldp: listening on lo for up to 20s"]
    heard = None
    for _ in range(50):  # the socket may not be bound on the first send
        send("lo", "rack7-node3", "test")
        if listener.join(0.1):
            heard = listener.poll()
            break
    assert heard is not None and heard.facts.system_name == "rack7-node3"
    assert heard.facts.port_id == "lo"
    off, none = start("lo", Options.from_text("cloudboot.lldp=0"), "amd64")
    assert off is None and none == []
    quiet = Listener("lo", 0.2)
    assert quiet.join(10) and quiet.poll() is None
    broken = Listener("no-such-nic0", 1.0)
    assert broken.join(10) and broken.poll() is None and "no-such-nic0" in broken.problems[0]


PLAN = b"""default_target = lldp.port_id == "port-001" ? "other" : "debian"
target "debian" {
  cmdline = "console=ttyS0 picked=debian"
  disk { device = "LABEL=debroot" }
}
target "other" {
  cmdline = "console=ttyS0 picked=${lldp.system_name}@${lldp.mgmt_addr}"
  disk { device = "LABEL=debroot" }
}
"""


@pytest.mark.parametrize("heard", [True, False])
def test_the_agent_evaluates_the_plan_with_what_was_heard(
    machine: Path, registry: RunningRegistry, heard: bool, lo_to_ourselves: None
) -> None:
    key, pem = new_key()
    (machine / "etc/cosign.pub").write_bytes(pem)
    digest = push_plan(registry.url, "plans/lldp", "latest", PLAN)
    sign(registry.url, "plans/lldp", f"{registry.address}/plans/lldp", digest, key)
    (machine / "proc/cmdline").write_text(
        f"cloudboot.plan=oci://{registry.address}/plans/lldp cloudboot.exit=reboot\n"
    )
    listener = Listener("lo", 10.0 if heard else 0.1)
    if heard:  # the real switch's LLDPDU, on a real packet socket
        switch = _frame("siemens-scalance-x212.hex")
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88CC)) as sock:
            while not listener.join(0.1):
                sock.sendto(switch[14:], ("lo", 0x88CC, 0, 0, switch[:6]))
    listener.join(10)
    out = io.StringIO()
    agent = Agent(
        HostSystem(lease=LEASE, lldp=listener), Console([out]), Paths(machine), Arch.X86_64
    )
    assert agent.run() == 0, out.getvalue()
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    text = LoadOption.from_bytes(boot.data).optional_text()
    if heard:
        assert "lldp neighbour: chassis=switch1 port=port-001 system='Switch1'" in out.getvalue()
        assert text.endswith("picked=Switch1@141.81.0.190")
    else:
        assert "lldp: no neighbour heard yet on lo" in out.getvalue()
        assert text.endswith("picked=debian")
