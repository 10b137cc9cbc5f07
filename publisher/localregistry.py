"""A local OCI registry: Debian's ``docker-registry`` (the CNCF distribution server) or
the builtin one (``publisher.ociserver``).

Used by ``cloudboot up`` as the embedded default and by the tests as the real registry,
so both exercise the same server. Optional TLS and htpasswd auth let tests cover
credentials and custom CA bundles (docker-registry only). ``implementation`` picks the
server: ``auto`` takes docker-registry when it is installed and the builtin server
otherwise (a Mac has no docker-registry: docs/wire-formats.md §6).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from publisher.run import require_tool, spawn

log = structlog.get_logger(__name__)

#: The one blob whose ``data`` file is empty by right.
EMPTY_BLOB_HEX = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class RegistryTls:
    cert: Path
    key: Path


@dataclass(frozen=True)
class RunningRegistry:
    host: str
    port: int
    storage: Path
    log: Path
    tls: RegistryTls | None = None
    implementation: str = "docker-registry"

    @property
    def address(self) -> str:
        """``host:port`` as it appears in refs."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def v2_answer(url: str, *, timeout: float, context: ssl.SSLContext | None = None) -> str | None:
    """None when an OCI registry answers ``GET {url}/v2/`` (200, or 401: one that wants
    credentials), else what answered instead, for an error message. The distribution
    spec's version check is the one request every registry serves, and any other web
    server on the port fails it (a 404, or no HTTP at all)."""
    try:
        urllib.request.urlopen(f"{url}/v2/", timeout=timeout, context=context).close()
    except urllib.error.HTTPError as exc:
        return None if exc.code == 401 else f"GET /v2/ answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET /v2/ got no HTTP answer ({reason})"
    return None


def registry_at(address: str, *, timeout: float = 3.0) -> str | None:
    """:func:`v2_answer` for ``host[:port]``, over HTTPS and then plain HTTP: None when
    either is a registry, else what the plain-HTTP request got. Nothing
    is sent but the version check, so the HTTPS probe does not verify the certificate
    (whether the registry's is trusted is the publish's concern, with [registry].ca_bundle)."""
    probe = ssl.create_default_context()
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
    if v2_answer(f"https://{address}", timeout=timeout, context=probe) is None:
        return None
    return v2_answer(f"http://{address}", timeout=timeout)


def _config_yaml(addr: str, storage: Path, tls: RegistryTls | None, htpasswd: Path | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {addr}",
    ]
    if tls:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: cloudboot", f"    path: {htpasswd}"]
    return "\n".join(lines) + "\n"


#: ``[registry].server`` values, in the order ``auto`` tries them.
IMPLEMENTATIONS = ("auto", "docker-registry", "builtin")


def pick_implementation(wanted: str = "auto") -> str:
    """``docker-registry`` or ``builtin``: what ``wanted`` means on this machine."""
    if wanted not in IMPLEMENTATIONS:
        raise CloudbootError(
            f"unknown registry implementation {wanted!r}; expected one of "
            + ", ".join(IMPLEMENTATIONS),
            where="[registry].server",
        )
    if wanted == "auto":
        return "docker-registry" if shutil.which("docker-registry") else "builtin"
    return wanted


def _named_digest(link: Path) -> str | None:
    """The digest a ``…/sha256/<hex>/link`` file must hold (its directories name it)."""
    hexdigest, algorithm = link.parent.name, link.parent.parent.name
    if algorithm == "sha256" and len(hexdigest) == 64 and hexdigest.isalnum():
        return f"sha256:{hexdigest}"
    return None


def repair_crash_leftovers(storage: Path) -> list[Path]:
    """Mend the empty files a killed docker-registry leaves in its storage; returns them.

    docker-registry writes a link file (and a manifest's ``data``) by truncating it and
    then writing, so a registry killed in between leaves it empty, and answers 500 for
    that blob, manifest or tag until it is written again (docs/wire-formats.md §8.6).
    A link under ``…/sha256/<hex>/`` (a blob or manifest linked into a repository, a
    tag's history) holds the digest its directories name, so it is written again; a
    tag's ``current/link`` cannot be known and goes (the tag reads as absent until the
    next publish sets it), as does an empty ``data`` other than the empty blob's.
    """
    root = storage / "docker" / "registry" / "v2"
    mended: list[Path] = []
    blobs = root / "blobs"
    for dirpath, _dirs, files in os.walk(root):
        here = Path(dirpath)
        stored = here.is_relative_to(blobs) and here.name != EMPTY_BLOB_HEX
        for name in files:
            path = here / name
            if name != "link" and not (name == "data" and stored):
                continue  # an upload's data (repositories/*/_uploads/) may be empty by right
            with contextlib.suppress(OSError):
                if path.stat().st_size != 0:
                    continue
                digest = _named_digest(path) if name == "link" else None
                if digest is None:
                    path.unlink()
                else:
                    write_atomic(path, digest.encode())
                mended.append(path)
    if mended:
        log.warning(
            "registry storage: mended files a killed registry left empty",
            storage=str(storage),
            files=[str(p.relative_to(root)) for p in mended],
        )
    return mended


def _wait_ready(url: str, proc_alive: object, deadline: float, ca: Path | None) -> None:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    answer: str | None = "no request made"
    while time.monotonic() < deadline:
        if not proc_alive():  # type: ignore[operator]
            raise CloudbootError("the registry exited during start-up", where=url)
        answer = v2_answer(url, timeout=1, context=context)
        if answer is None:
            return
        time.sleep(0.05)
    raise CloudbootError(
        f"the registry did not answer within the start-up timeout ({answer})", where=url
    )


@contextlib.contextmanager
def local_registry(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    storage: Path | None = None,
    tls: RegistryTls | None = None,
    htpasswd: Path | None = None,
    startup_timeout: float = 20.0,
    implementation: str = "docker-registry",
) -> Iterator[RunningRegistry]:
    """Run a registry on ``host:port`` (a free port by default) until the block ends.

    The tests' default is docker-registry, the real thing; ``cloudboot up`` passes the
    workspace's ``[registry].server`` (``auto``).
    """
    chosen = pick_implementation(implementation)
    if chosen == "builtin" and (tls or htpasswd):
        raise CloudbootError("the builtin registry has no TLS or auth; use docker-registry")
    binary = require_tool("docker-registry", "docker-registry") if chosen != "builtin" else ""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    if port_in_use(host, port):
        raise CloudbootError(f"port {port} on {host} is already in use", where="registry")
    storage = storage or workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    registry = RunningRegistry(host, port, storage, log, tls, chosen)
    if chosen == "builtin":
        argv = [sys.executable, "-m", "publisher.ociserver", "--root", str(storage),
                "--host", host, "--port", str(port)]  # fmt: skip
    else:
        repair_crash_leftovers(storage)
        config = workdir / "registry.yml"
        config.write_text(_config_yaml(f"{host}:{port}", storage, tls, htpasswd))
        argv = [binary, "serve", str(config)]
    # OTEL tracing in distribution >= 3 tries to reach a collector; keep it quiet and local.
    env = {"OTEL_TRACES_EXPORTER": "none"}
    with spawn(argv, stdout=log, env=env) as proc:
        _wait_ready(
            registry.url,
            lambda: proc.poll() is None,
            time.monotonic() + startup_timeout,
            tls.cert if tls else None,
        )
        yield registry
