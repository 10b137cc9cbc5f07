"""The agent's whole pass against a registry as a fleet runs it (on the host, see
tests/agent_harness.py): an ``_oci._tcp`` name served by dnsmasq whose preferred replica is
down, the other replica HTTPS with a private CA and htpasswd, the CA baked where the
recipe's ``[registry] ca`` puts it, credentials from ``rd.cloudboot.user``/``pass``.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guest.agent.cmdline import CmdlineError, Options
from guest.agent.registryconf import REGISTRY_CA
from publisher.localregistry import free_port
from tests.agent_harness import _plan, _run, machine
from tests.dns_server import DnsServer, SrvRecord, dns_server
from tests.helpers import push_plan
from tests.registry_tls import TlsRegistry, tls_registry

__all__ = ["machine"]

NAME = "_oci._tcp.fleet.test"


@dataclass(frozen=True)
class SecureFleet:
    tls: TlsRegistry
    dns: DnsServer

    def cmdline(self, password: str) -> str:
        return (
            f"cloudboot.plan={NAME}/plans/web cloudboot.cosign=off"
            f" cloudboot.dns=127.0.0.1 cloudboot.dns.port={self.dns.port}"
            f" rd.cloudboot.user={self.tls.user} rd.cloudboot.pass={password}"
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SecureFleet]:
    with tls_registry(tmp_path / "tls", names=("DNS:b.fleet.test",)) as tls:
        closed = free_port()  # the preferred replica: nothing listens there
        records = [
            SrvRecord(NAME, "a.fleet.test", closed, 10, 1),
            SrvRecord(NAME, "b.fleet.test", tls.registry.port, 20, 1),
        ]
        hosts = {"a.fleet.test": "127.0.0.1", "b.fleet.test": "127.0.0.1"}
        with dns_server(tmp_path / "dns", records, hosts) as dns:
            context = ssl.create_default_context(cafile=str(tls.ca))
            basic = base64.b64encode(f"{tls.user}:{tls.password}".encode()).decode()
            auth = {"Authorization": f"Basic {basic}"}
            push_plan(
                tls.registry.url, "plans/web", "latest", _plan(), headers=auth, context=context
            )
            yield SecureFleet(tls, dns)


def _bake(root: Path, fleet: SecureFleet, *, ca: bool = True) -> None:
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")  # DHCP's: not asked
    baked = root / REGISTRY_CA.lstrip("/")
    baked.parent.mkdir(parents=True, exist_ok=True)
    if ca:
        baked.write_bytes(fleet.tls.ca.read_bytes())
    else:
        baked.unlink(missing_ok=True)


def test_srv_failover_to_an_https_replica_with_baked_ca_and_cmdline_credentials(
    machine: Path, fleet: SecureFleet
) -> None:
    _bake(machine, fleet)
    status, log, system = _run(machine, fleet.cmdline(fleet.tls.password))
    assert status == 0, log
    assert system.rebooted and "Boot0001 = cloud-boot debian" in log
    assert f"WARNING: {NAME}: cannot reach a.fleet.test:" in log and "next replica" in log
    assert fleet.tls.password not in log


def test_wrong_credentials_are_fatal_naming_the_registry_never_the_password(
    machine: Path, fleet: SecureFleet
) -> None:
    _bake(machine, fleet)
    wrong = "Wr0ng-guess-77"
    status, log, system = _run(machine, fleet.cmdline(wrong))
    assert status == 1 and not system.rebooted
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal, log
    assert f"b.fleet.test:{fleet.tls.registry.port}" in fatal[0] and "credentials" in fatal[0]
    assert NAME in fatal[0]
    assert "hint: check rd.cloudboot.user / rd.cloudboot.pass" in log
    assert wrong not in log and base64.b64encode(wrong.encode()).decode() not in log


def test_cmdline_credentials_are_typed_and_never_in_a_repr() -> None:
    options = Options.from_text("cloudboot.plan=r/p rd.cloudboot.user=al rd.cloudboot.pass=pw-91")
    assert (options.registry_user, options.registry_password) == ("al", "pw-91")
    assert "pw-91" not in repr(options) and "rd.cloudboot" not in str(options.raw)


def test_without_the_baked_ca_the_replica_is_not_trusted(machine: Path, fleet: SecureFleet) -> None:
    _bake(machine, fleet, ca=False)
    status, log, _system = _run(machine, fleet.cmdline(fleet.tls.password))
    assert status == 1
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "CERTIFICATE_VERIFY_FAILED" in fatal[0], log
    assert fleet.tls.password not in log


def test_a_bad_dns_port_is_an_error_naming_the_knob() -> None:
    from guest.agent import registryconf

    assert registryconf.dns_port(Options.from_text("cloudboot.dns.port=5353")) == 5353
    assert registryconf.dns_port(Options.from_text("")) == 53
    for bad in ("0", "65536", "x", "-1"):
        with pytest.raises(CmdlineError, match=r"cloudboot\.dns\.port="):
            registryconf.dns_port(Options.from_text(f"cloudboot.dns.port={bad}"))
