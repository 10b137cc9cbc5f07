"""A docker-registry with TLS (self-signed cert made by openssl) and htpasswd (bcrypt) auth."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from publisher.localregistry import RegistryTls, RunningRegistry, local_registry
from publisher.run import run

USER, PASSWORD = "alice", "s3cret-Pa55"


@dataclass(frozen=True)
class TlsRegistry:
    registry: RunningRegistry
    ca: Path  # the self-signed certificate, usable as a CA bundle
    user: str = USER
    password: str = PASSWORD


@contextlib.contextmanager
def tls_registry(
    workdir: Path, names: tuple[str, ...] = (), storage: Path | None = None
) -> Iterator[TlsRegistry]:
    """``names``: more subjectAltNames (``IP:10.0.2.2``, ``DNS:a.fleet.test``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    san = ",".join(("IP:127.0.0.1", "DNS:localhost", *names))
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", f"subjectAltName={san}",
        ]
    )  # fmt: skip
    htpasswd = workdir / "htpasswd"
    run(["htpasswd", "-iBc", htpasswd, USER], input=PASSWORD.encode())  # not in argv
    tls = RegistryTls(cert, key)
    with local_registry(workdir / "reg", tls=tls, htpasswd=htpasswd, storage=storage) as reg:
        yield TlsRegistry(reg, cert)
