"""`cloudboot registry serve`: the embedded local registry a workspace publishes to.

Runs the workspace's [registry].server (docker-registry, the one the tests use, or the builtin
one where docker-registry does not exist, as on a Mac) on the workspace's [registry] url, so
a new user needs no registry of their own. Refuses non-loopback addresses: the embedded
registry has no auth and must never be exposed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import threading
from typing import Annotated

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import state

registry_app = typer.Typer(rich_markup_mode=None, help="Run the embedded local OCI registry.")


def loopback_host_port(url: str) -> tuple[str, int]:
    """Split ``host:port`` and insist the host is loopback."""
    host, _, port_text = url.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CloudbootError(f"expected host:port, got {url!r}", where="[registry].url")
    host = host.strip("[]")
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise CloudbootError(
            f"the embedded registry only listens on loopback, not {host!r}", where="[registry].url"
        )
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


@registry_app.command("serve")
def serve(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Override the port of [registry].url."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="auto, docker-registry or builtin (default: [registry].server)."),
    ] = None,
) -> None:
    """Serve the workspace's registry in the foreground until Ctrl-C / SIGTERM."""
    from publisher.localregistry import local_registry

    config = state(ctx).config
    host, url_port = loopback_host_port(config.registry.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workdir = config.root / ".cloudboot" / "registry-run"
    with local_registry(
        workdir,
        host=host,
        port=port or url_port,
        storage=config.registry.storage,
        implementation=server or config.registry.server.value,
    ) as reg:
        typer.echo(
            f"registry ({reg.implementation}) serving at {reg.url} (storage {reg.storage}); "
            "Ctrl-C stops it"
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
