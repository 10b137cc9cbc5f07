"""Registry transport options and credentials, spelled as oras, cosign and skopeo users expect.

Plain HTTP and skipping TLS verification are two different things, so two flags:
``--plain-http`` (oras; cosign's ``--allow-http-registry``) and ``--insecure`` (oras;
cosign's ``--allow-insecure-registry``; skopeo's ``--tls-verify=false``). ``--secure`` (the
old "force HTTPS") is kept as a deprecated spelling of ``--no-plain-http``. Credentials
come from ``--authfile``, ``$REGISTRY_AUTH_FILE`` or docker's config (``cloudboot login``
writes it), then ``REGISTRY_USERNAME``/``REGISTRY_PASSWORD``.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from watcher.cli.errors import UsageError

PlainHttpOpt = Annotated[
    bool | None,
    typer.Option(
        "--plain-http/--no-plain-http",
        "--allow-http-registry/--secure",
        help="Talk plain HTTP to the registry (default: plain HTTP for loopback only; "
        "--secure is a deprecated spelling of --no-plain-http).",
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        "--allow-insecure-registry",
        help="HTTPS without verifying the registry's certificate (never for a registry "
        "you do not control).",
    ),
]
TlsVerifyOpt = Annotated[
    str | None,
    typer.Option(
        "--tls-verify",
        metavar="true|false",
        help="skopeo/podman spelling: --tls-verify=false is --insecure.",
    ),
]
CaOpt = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM CA bundle to trust for HTTPS.")
]
AuthfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--authfile",
        help="Credentials file (docker config.json / podman auth.json format; default: "
        "$REGISTRY_AUTH_FILE, else ~/.docker/config.json).",
    ),
]


def verify_tls(insecure: bool, tls_verify: str | None) -> bool:
    """Whether to verify certificates, from ``--insecure`` and ``--tls-verify``."""
    if tls_verify is None:
        return not insecure
    value = tls_verify.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise UsageError(f"expected true or false, got {tls_verify!r}", where="--tls-verify")
    if insecure and value in ("true", "1", "yes"):
        raise UsageError("--insecure and --tls-verify=true contradict each other")
    return value in ("true", "1", "yes") and not insecure


def _registry_name(text: str) -> str:
    """``host[:port]`` from what a user types (``https://host:5000/``, ``host:5000``)."""
    name = text.split("://", 1)[-1].split("/", 1)[0].strip().lower()
    port = name.rpartition(":")[2] if ":" in name else ""
    if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise UsageError(f"expected a registry host[:port], got {text!r}", where="REGISTRY")
    return name


def login(
    registry: Annotated[str, typer.Argument(help="Registry host[:port].")],
    username: Annotated[str, typer.Option("--username", "-u", help="User name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    authfile: AuthfileOpt = None,
) -> None:
    """Store registry credentials (docker config.json, through its credential helper).

    The password is read from stdin (--password-stdin) or asked on the terminal; it is
    never taken from the command line.
    """
    from publisher.authfile import auth_file, login as store

    name = _registry_name(registry)
    if password_stdin:
        password = sys.stdin.readline(4096).rstrip("\r\n")  # a password, not a stream
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {username}@{name}: ")
    else:
        raise UsageError("no terminal to ask for the password: pass --password-stdin")
    if not password:
        raise UsageError("empty password", where="--password-stdin")
    where = store(auth_file(authfile), name, username, password)
    typer.echo(f"Login Succeeded: credentials for {name} stored in {where}")


def logout(
    registry: Annotated[str, typer.Argument(help="Registry host[:port].")],
    authfile: AuthfileOpt = None,
) -> None:
    """Remove stored credentials for REGISTRY."""
    from publisher.authfile import auth_file, logout as erase

    name = _registry_name(registry)
    path = auth_file(authfile)
    if erase(path, name):
        typer.echo(f"Removed credentials for {name} from {path}")
    else:
        typer.echo(f"Not logged in to {name} ({path})")


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
