"""``_oci._tcp.<domain>`` registries: DNS SRV lookup and RFC 2782 ordering in the guest.

A fleet names one logical registry and lets DNS list its replicas with priorities and
weights (docs/wire-formats.md §9, "Registries"). The initramfs has no resolver that
knows SRV, so the agent asks the resolvers itself, over UDP (TCP when the answer is
truncated), bounded in bytes and time: ``QUERY_TIMEOUT`` per try, ``TRIES`` rounds over
the servers, answers of at most 64 KiB parsed by ``guest.contract.dnswire``. The
targets' addresses come from the same resolvers (the answer's additional section, else an
A query), so a lab resolver on a non-standard port works end to end.

The ordered endpoint list is cached for ``min(record TTL, CACHE_SECONDS)`` per name and
resolver set; an endpoint that failed is moved to the end of the cached list so the
requests after a failover go straight to the replica that answered.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guest.contract import dnswire
from guest.contract.errors import CloudbootError

CACHE_SECONDS = 30.0
QUERY_TIMEOUT = 2.0
TRIES = 2
MAX_UDP = 4096
MAX_TCP = 65535

Server = tuple[str, int]


class SrvError(CloudbootError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """One place to send registry requests: ``host`` goes in the URL (and TLS SNI),
    ``address``, when set, is where the socket connects."""

    host: str
    address: str | None = None


def is_srv_name(host: str) -> bool:
    """``_service._proto.domain`` (no port): the shape upstream treats as an SRV name."""
    labels = host.split(".")
    return (
        len(labels) >= 3
        and all(labels)
        and labels[0].startswith("_")
        and labels[1].startswith("_")
        and ":" not in host
    )


def rfc2782_order(records: Sequence[dnswire.Srv], rng: random.Random) -> list[dnswire.Srv]:
    """Lowest priority first; within one priority a weighted random draw without
    replacement, zero-weight records placed first so they can still be drawn (RFC 2782)."""
    usable = [r for r in records if r.target]
    out: list[dnswire.Srv] = []
    for priority in sorted({r.priority for r in usable}):
        group = sorted((r for r in usable if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out


class Resolver:
    """SRV lookups against ``servers()`` (called per lookup: a plan may change them)."""

    def __init__(
        self,
        servers: Callable[[], Sequence[Server]],
        *,
        timeout: float = QUERY_TIMEOUT,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.clock = clock
        self._cache: dict[tuple[str, tuple[Server, ...]], tuple[float, list[Endpoint]]] = {}
        self.lookups = 0  # DNS round trips made, for tests and the log

    def endpoints(self, name: str) -> list[Endpoint]:
        """The replicas of ``name`` in the order to try them."""
        servers = tuple(self.servers())
        if not servers:
            raise SrvError(f"no DNS resolver to look up {name} (DHCP or cloudboot.dns)")
        key = (name.lower(), servers)
        cached = self._cache.get(key)
        if cached and cached[0] > self.clock():
            return list(cached[1])
        answer = self._query(servers, name, dnswire.TYPE_SRV)
        if answer.rcode not in (0, dnswire.RCODE_NXDOMAIN):
            raise SrvError(f"DNS error (rcode {answer.rcode}) looking up SRV {name}")
        ordered = rfc2782_order(answer.srv, self.rng)
        if not ordered:
            raise SrvError(f"no SRV records for {name}")
        endpoints = [self._endpoint(servers, r, answer.addresses) for r in ordered]
        ttl = min(float(answer.ttl), CACHE_SECONDS)
        self._cache[key] = (self.clock() + ttl, endpoints)
        return list(endpoints)

    def demote(self, name: str, endpoint: Endpoint) -> None:
        """Move a failed endpoint to the end of the cached order for ``name``."""
        for (cached_name, _servers), (_expiry, endpoints) in self._cache.items():
            if cached_name == name.lower() and endpoint in endpoints:
                endpoints.remove(endpoint)
                endpoints.append(endpoint)

    def _endpoint(
        self, servers: tuple[Server, ...], record: dnswire.Srv, known: dict[str, tuple[str, ...]]
    ) -> Endpoint:
        host = f"{record.target}:{record.port}"
        try:
            ipaddress.ip_address(record.target)
        except ValueError:
            pass
        else:
            return Endpoint(host, record.target)
        addresses = known.get(record.target)
        if not addresses:
            answer = self._query(servers, record.target, dnswire.TYPE_A)
            addresses = answer.addresses.get(record.target)
        if not addresses:
            raise SrvError(f"SRV target {record.target} has no address")
        return Endpoint(host, addresses[0])

    def _query(self, servers: tuple[Server, ...], name: str, qtype: int) -> dnswire.Answer:
        failures: list[str] = []
        for _round in range(TRIES):
            for server in servers:
                query_id = self.rng.randrange(1 << 16)
                query = dnswire.encode_query(query_id, name, qtype)
                self.lookups += 1
                try:
                    data = self._udp(server, query, query_id)
                    answer = dnswire.decode_answer(data, query_id, name, qtype)
                    if answer.truncated:
                        data = self._tcp(server, query)
                        answer = dnswire.decode_answer(data, query_id, name, qtype)
                except (OSError, dnswire.DnsFormatError) as exc:
                    failures.append(f"{server[0]}:{server[1]}: {exc}")
                    continue
                return answer
        raise SrvError(f"no DNS answer for {name}: " + "; ".join(failures[-len(servers) :]))

    def _udp(self, server: Server, query: bytes, query_id: int) -> bytes:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(server)
            sock.send(query)
            deadline = self.clock() + self.timeout
            while True:  # skip stray datagrams (another id) until the deadline
                data = sock.recv(MAX_UDP)
                if data[:2] == struct.pack(">H", query_id):
                    return data
                if self.clock() > deadline:
                    raise TimeoutError("timed out")

    def _tcp(self, server: Server, query: bytes) -> bytes:
        with socket.create_connection(server, timeout=self.timeout) as sock:
            sock.sendall(struct.pack(">H", len(query)) + query)
            stream = sock.makefile("rb")
            head = stream.read(2)
            if len(head) != 2:
                raise OSError("connection closed before the answer")
            size = struct.unpack(">H", head)[0]
            data = stream.read(min(size, MAX_TCP))
            if len(data) != size:
                raise OSError("connection closed inside the answer")
            return data
