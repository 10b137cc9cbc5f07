"""DNS messages as bytes (RFC 1035, SRV records from RFC 2782): just what the guest asks.

Pure. The guest resolves ``_oci._tcp.<domain>`` registry names itself (no libc resolver
in the initramfs knows SRV), so it needs a query encoder and an answer decoder. Answers
are untrusted bytes from the network: every read is bounds-checked, compression pointers
may only point backwards and are followed a bounded number of times, and a name is at
most 255 bytes, so a hostile answer is a ``DnsFormatError``, never a hang or a crash.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from guest.contract.errors import CloudbootError

TYPE_A = 1
TYPE_AAAA = 28
TYPE_SRV = 33
CLASS_IN = 1
MAX_NAME = 255
MAX_POINTERS = 32
MAX_RECORDS = 64
RCODE_NXDOMAIN = 3


class DnsFormatError(CloudbootError):
    """An answer that does not parse (or does not answer our question)."""


@dataclass(frozen=True)
class Srv:
    """One SRV record's data (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str  # lower-case, no trailing dot; "" is RFC 2782's "." (no service here)


@dataclass(frozen=True)
class Answer:
    """What one response says: SRV records, addresses by owner name, the smallest TTL."""

    rcode: int
    truncated: bool
    srv: tuple[Srv, ...]
    addresses: dict[str, tuple[str, ...]]
    ttl: int


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsFormatError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > MAX_NAME:
        raise DnsFormatError(f"name longer than {MAX_NAME} bytes: {name[:40]!r}...")
    return bytes(out)


def encode_query(query_id: int, name: str, qtype: int) -> bytes:
    """A standard recursive query for one (name, type, IN) question."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack(">HH", qtype, CLASS_IN)


def _need(data: bytes, offset: int, size: int) -> None:
    if offset + size > len(data):
        raise DnsFormatError(f"answer ends inside a field at byte {offset}")


def decode_name(data: bytes, offset: int) -> tuple[str, int]:
    """(name, offset after it in the message); pointers only point backwards."""
    labels: list[str] = []
    end: int | None = None
    total = 0
    for _ in range(MAX_POINTERS + MAX_NAME):
        _need(data, offset, 1)
        length = data[offset]
        if length & 0xC0 == 0xC0:
            _need(data, offset, 2)
            target = struct.unpack_from(">H", data, offset)[0] & 0x3FFF
            if target >= offset:
                raise DnsFormatError(f"compression pointer at byte {offset} points forward")
            end = offset + 2 if end is None else end
            offset = target
            continue
        if length & 0xC0:
            raise DnsFormatError(f"unknown label type {length:#x} at byte {offset}")
        if length == 0:
            return ".".join(labels).lower(), (offset + 1 if end is None else end)
        _need(data, offset + 1, length)
        total += length + 1
        if total > MAX_NAME:
            raise DnsFormatError(f"name longer than {MAX_NAME} bytes at byte {offset}")
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise DnsFormatError("too many compression pointers")


def decode_answer(data: bytes, query_id: int, name: str, qtype: int) -> Answer:
    """Parse a response to ``encode_query(query_id, name, qtype)``."""
    _need(data, 0, 12)
    rid, flags, qdcount, ancount, nscount, arcount = struct.unpack_from(">HHHHHH", data, 0)
    if rid != query_id or not flags & 0x8000:
        raise DnsFormatError("not the response to our query (id or QR bit)")
    if qdcount != 1:
        raise DnsFormatError(f"response carries {qdcount} questions, expected 1")
    if ancount + nscount + arcount > MAX_RECORDS:
        raise DnsFormatError(f"response carries more than {MAX_RECORDS} records")
    qname, offset = decode_name(data, 12)
    _need(data, offset, 4)
    if qname != name.rstrip(".").lower() or struct.unpack_from(">H", data, offset)[0] != qtype:
        raise DnsFormatError(f"response is for {qname!r}, not {name!r}")
    offset += 4
    srv: list[Srv] = []
    addresses: dict[str, list[str]] = {}
    ttl = 1 << 31
    for index in range(ancount + nscount + arcount):
        owner, offset = decode_name(data, offset)
        _need(data, offset, 10)
        rtype, rclass, rttl, rdlength = struct.unpack_from(">HHIH", data, offset)
        offset += 10
        _need(data, offset, rdlength)
        rdata_at, offset = offset, offset + rdlength
        if rclass != CLASS_IN or (index >= ancount + nscount and rtype == TYPE_SRV):
            continue
        if ancount <= index < ancount + nscount:
            continue  # authority: nothing we use
        if rtype == TYPE_SRV and owner == qname:
            if rdlength < 7:
                raise DnsFormatError(f"SRV record of {rdlength} bytes")
            priority, weight, port = struct.unpack_from(">HHH", data, rdata_at)
            target, after = decode_name(data, rdata_at + 6)
            if after != rdata_at + rdlength:
                raise DnsFormatError("SRV record length does not match its target")
            srv.append(Srv(priority, weight, port, target))
            ttl = min(ttl, rttl)
        elif rtype in (TYPE_A, TYPE_AAAA) and rdlength in (4, 16):
            raw = data[rdata_at : rdata_at + rdlength]
            addresses.setdefault(owner, []).append(str(ipaddress.ip_address(raw)))
            if index < ancount:
                ttl = min(ttl, rttl)
    return Answer(
        rcode=flags & 0xF,
        truncated=bool(flags & 0x0200),
        srv=tuple(srv),
        addresses={k: tuple(v) for k, v in addresses.items()},
        ttl=ttl if ttl != 1 << 31 else 0,
    )
