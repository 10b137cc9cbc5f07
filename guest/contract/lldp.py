"""LLDP (IEEE 802.1AB) data units: what a switch says about the port a machine is plugged
into, as the ``lldp.*`` facts plans branch on (docs/wire-formats.md §1; docs/knobs.md).

Pure: bytes in, a frozen dataclass out, and the one frame this guest announces itself
with. A TLV is a 16-bit header (7-bit type, 9-bit length) and its value; the data unit
ends at an End TLV (type 0) or where the bytes end. Received bytes come from anyone on
the wire: the input is bounded (``MAX_LLDPDU``), a TLV that runs past the end is an
error, unknown and organisation-specific TLVs are skipped, and text is decoded with
replacement characters, never trusted to be UTF-8.

IDs are read as upstream's guest reads them: a MAC-address subtype (chassis 4, port 3)
of six bytes becomes ``aa:bb:cc:dd:ee:ff``; any other subtype is its bytes as text.
The management address is the first IPv4 or IPv6 one.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from guest.contract.errors import FormatError
from guest.contract.plan.model import Lldp

ETHERTYPE = 0x88CC
#: The "nearest bridge" group address LLDP frames are sent to.
MULTICAST = bytes.fromhex("0180c200000e")
#: An LLDPDU fits one untagged Ethernet frame; anything longer is not one.
MAX_LLDPDU = 1500

END, CHASSIS_ID, PORT_ID, TTL, PORT_DESC, SYSTEM_NAME, SYSTEM_DESC, CAPABILITIES, MGMT = range(9)
_MAC_SUBTYPES = {CHASSIS_ID: 4, PORT_ID: 3}
#: Subtypes this guest announces with: chassis = its MAC, port = the interface name.
CHASSIS_MAC, PORT_IFNAME = 4, 5


@dataclass(frozen=True)
class Neighbour:
    """One received LLDPDU: the plan's ``lldp.*`` facts, and what only the wire says."""

    facts: Lldp
    ttl: int = 0
    chassis_subtype: int = 0
    port_subtype: int = 0


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _id(tlv_type: int, value: bytes) -> tuple[int, str]:
    subtype, body = value[0], value[1:]
    if subtype == _MAC_SUBTYPES[tlv_type] and len(body) == 6:
        return subtype, ":".join(f"{b:02x}" for b in body)
    return subtype, _text(body)


def _mgmt_addr(value: bytes) -> str:
    """Address string length (subtype + address), IANA subtype (1 IPv4, 2 IPv6), address."""
    length = value[0]
    address = value[2 : 1 + length]
    if length == 5 and value[1] == 1 and len(address) == 4:
        return str(ipaddress.IPv4Address(address))
    if length == 17 and value[1] == 2 and len(address) == 16:
        return str(ipaddress.IPv6Address(address))
    return ""


def tlvs(payload: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) pairs up to the End TLV; an overrun is a ``FormatError``."""
    if len(payload) > MAX_LLDPDU:
        raise FormatError(f"{len(payload)} bytes, more than {MAX_LLDPDU}", what="LLDPDU")
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(payload):
        (header,) = struct.unpack_from(">H", payload, pos)
        kind, length = header >> 9, header & 0x1FF
        pos += 2
        if kind == END:
            break
        if pos + length > len(payload):
            raise FormatError(
                f"TLV type {kind} at byte {pos - 2} says {length} bytes, {len(payload) - pos} left",
                what="LLDPDU",
            )
        out.append((kind, payload[pos : pos + length]))
        pos += length
    return out


def parse_lldpdu(payload: bytes) -> Neighbour:
    """The facts in an LLDPDU (the bytes after the Ethernet header); the first of each
    TLV counts."""
    facts: dict[str, str] = {}
    wire: dict[str, int] = {}
    texts = {PORT_DESC: "port_desc", SYSTEM_NAME: "system_name", SYSTEM_DESC: "system_desc"}
    for kind, value in tlvs(payload):
        if kind in (CHASSIS_ID, PORT_ID) and len(value) >= 2:
            prefix = "chassis" if kind == CHASSIS_ID else "port"
            subtype, text = _id(kind, value)
            wire.setdefault(f"{prefix}_subtype", subtype)
            facts.setdefault(f"{prefix}_id", text)
        elif kind == TTL and len(value) >= 2:
            wire.setdefault("ttl", struct.unpack_from(">H", value)[0])
        elif kind in texts:
            facts.setdefault(texts[kind], _text(value))
        elif kind == MGMT and len(value) >= 2 and not facts.get("mgmt_addr"):
            facts["mgmt_addr"] = _mgmt_addr(value)
    return Neighbour(Lldp(available=True, **facts), **wire)


def parse_frame(frame: bytes) -> Neighbour:
    """An Ethernet frame carrying an LLDPDU (an 802.1Q tag is looked through)."""
    offset = 12
    ethertype = struct.unpack_from(">H", frame, offset)[0] if len(frame) >= 14 else 0
    if ethertype == 0x8100 and len(frame) >= 18:
        offset += 4
        ethertype = struct.unpack_from(">H", frame, offset)[0]
    if ethertype != ETHERTYPE:
        raise FormatError(f"ethertype {ethertype:#06x}, not LLDP", what="LLDP frame")
    return parse_lldpdu(frame[offset + 2 :])


def _tlv(kind: int, value: bytes) -> bytes:
    value = value[:0x1FF]
    return struct.pack(">H", kind << 9 | len(value)) + value


def build_lldpdu(mac: bytes, interface: str, system_name: str, system_desc: str) -> bytes:
    """This machine's announcement: chassis = MAC, port = interface name, TTL 120 s,
    system name and description, End (the mandatory TLVs first, as 802.1AB wants)."""
    out = _tlv(CHASSIS_ID, bytes([CHASSIS_MAC]) + mac)
    out += _tlv(PORT_ID, bytes([PORT_IFNAME]) + interface.encode())
    out += _tlv(TTL, struct.pack(">H", 120))
    if system_name:
        out += _tlv(SYSTEM_NAME, system_name.encode())
    if system_desc:
        out += _tlv(SYSTEM_DESC, system_desc.encode())
    return out + _tlv(END, b"")
