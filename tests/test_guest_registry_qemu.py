"""Registries as fleets run them, met by the real guest in QEMU (TCG, OVMF, x86_64).

- SRV: the baked plan ref is ``_oci._tcp.fleet.test/...``; dnsmasq on the host (reached
  as 10.0.2.2 through QEMU's user network, ``cloudboot.dns=10.0.2.2`` with
  ``cloudboot.dns.port``) lists two docker-registry replicas sharing one storage; the
  preferred one was stopped after the plan was pushed through it -> the guest boots the
  target from the other.
- Credentials: an HTTPS + htpasswd docker-registry whose certificate comes from a private
  CA that only the recipe's ``[registry] ca`` brings into the UKI; ``rd.cloudboot.user`` /
  ``rd.cloudboot.pass`` on the baked command line -> the target boots; the wrong password
  -> FATAL naming the registry. The password appears nowhere on the serial console
  (``loglevel=4`` keeps the kernel's own "Kernel command line:" notice off it; see
  docs/knobs.md).
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from publisher.localregistry import free_port, local_registry
from tests.dns_server import SrvRecord, dns_server
from tests.helpers import push_plan, sign
from tests.qemu_lab import MARKER, OVMF_CODE, PLAN, Lab, _vars, boot, make_lab
from tests.registry_tls import PASSWORD, TlsRegistry, tls_registry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]

NAME = "_oci._tcp.fleet.test"


def test_srv_preferred_replica_stopped_guest_boots_from_the_other(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("srv-lab")
    dns_port = free_port()
    cmdline = (
        f"cloudboot.exit=reboot cloudboot.plan={NAME}/plans/web cloudboot.insecure=1"
        f" cloudboot.dns=10.0.2.2 cloudboot.dns.port={dns_port} console=ttyS0"
    )
    with make_lab(root, cmdline=cmdline) as lab:
        with local_registry(root / "preferred", storage=lab.registry.storage) as preferred:
            digest = push_plan(preferred.url, "plans/web", "latest", PLAN)
            sign(preferred.url, "plans/web", f"{NAME}/plans/web", digest, lab.key)  # type: ignore[arg-type]
            gone = preferred.port
        records = [
            SrvRecord(NAME, "a.fleet.test", gone, 10, 100),
            SrvRecord(NAME, "b.fleet.test", lab.registry.port, 20, 100),
        ]
        hosts = {"a.fleet.test": "10.0.2.2", "b.fleet.test": "10.0.2.2"}
        with dns_server(root / "dns", records, hosts, port=dns_port) as dns:
            log, vars_fd = boot(lab, "srv", MARKER)
            queries = dns.log.read_text(errors="replace")
    assert MARKER in log, log[-3000:]
    assert f"WARNING: {NAME}: cannot reach a.fleet.test:{gone}" in log  # tried first
    assert f"query[SRV] {NAME}" in queries
    assert _vars(vars_fd)["BootOrder"][:2] == b"\x01\x00"


@dataclass(frozen=True)
class SecureLab:
    lab: Lab
    tls: TlsRegistry


@contextlib.contextmanager
def _secure_lab(root: Path, password: str) -> Iterator[SecureLab]:
    """An ISO whose baked cmdline names the HTTPS registry with ``password``."""
    with tls_registry(root / "tls", names=("IP:10.0.2.2",)) as tls:
        cmdline = (
            f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{tls.registry.port}/plans/web"
            f" rd.cloudboot.user={tls.user} rd.cloudboot.pass={password}"
            " loglevel=4 console=ttyS0"
        )
        extra = f'\n[registry]\nca = "{tls.ca}"\n'
        with make_lab(root, cmdline=cmdline, recipe_extra=extra) as lab:
            context = ssl.create_default_context(cafile=str(tls.ca))
            basic = base64.b64encode(f"{tls.user}:{tls.password}".encode()).decode()
            auth = {"Authorization": f"Basic {basic}"}
            url = tls.registry.url
            digest = push_plan(url, "plans/web", "latest", PLAN, headers=auth, context=context)
            identity = f"10.0.2.2:{tls.registry.port}/plans/web"
            sign(url, "plans/web", identity, digest, lab.key, headers=auth, context=context)  # type: ignore[arg-type]
            yield SecureLab(lab, tls)


def test_https_registry_with_private_ca_and_cmdline_credentials(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("creds-lab")
    with _secure_lab(root, password=PASSWORD) as secure:
        log, _vars_fd = boot(secure.lab, "creds", MARKER)
    assert MARKER in log, log[-3000:]
    assert secure.tls.password not in log


def test_wrong_credentials_fatal_names_the_registry_not_the_password(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("wrong-creds-lab")
    wrong = "Wr0ng-guess-77"
    with _secure_lab(root, password=wrong) as secure:
        log, vars_fd = boot(secure.lab, "wrong", "FATAL")
        port = secure.tls.registry.port
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and f"10.0.2.2:{port}" in fatal[0] and "credentials" in fatal[0], log[-3000:]
    assert wrong not in log and base64.b64encode(wrong.encode()).decode() not in log
    assert MARKER not in log
    assert _vars(vars_fd)["BootOrder"][:2] != b"\x01\x00"
