"""A real DNS server for the tests: dnsmasq (Debian ``dnsmasq-base``) on a loopback port.

It serves only what the test gives it (``--no-resolv --no-hosts``): SRV records and the
A records of their targets, and logs every query so a test can count lookups.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from guest.contract import dnswire
from publisher.localregistry import free_port
from publisher.run import require_tool, spawn


@dataclass(frozen=True)
class SrvRecord:
    name: str
    target: str
    port: int
    priority: int
    weight: int


@dataclass(frozen=True)
class DnsServer:
    host: str
    port: int
    log: Path

    def queries(self) -> int:
        return self.log.read_text(errors="replace").count("query[")


def _answers(host: str, port: int) -> bool:
    query = dnswire.encode_query(7, "ready.invalid", dnswire.TYPE_A)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(query, (host, port))
            return bool(sock.recv(512))
        except OSError:
            return False


@contextlib.contextmanager
def dns_server(
    workdir: Path,
    srv: Sequence[SrvRecord],
    hosts: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    ttl: int = 60,
) -> Iterator[DnsServer]:
    binary = require_tool("dnsmasq", "dnsmasq-base")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log = workdir / "dnsmasq.log"
    log.touch()
    argv = [
        binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--bind-interfaces", f"--listen-address={host}", f"--port={port}", "--pid-file=",
        "--user=root", "--log-queries", f"--log-facility={log}", f"--local-ttl={ttl}",
        "--except-interface=nonexistent0",
    ]  # fmt: skip
    argv += [f"--srv-host={r.name},{r.target},{r.port},{r.priority},{r.weight}" for r in srv]
    argv += [f"--host-record={name},{address}" for name, address in hosts.items()]
    with spawn(argv, stdout=workdir / "dnsmasq.out"):
        deadline = time.monotonic() + 20
        while not _answers(host, port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield DnsServer(host, port, log)
