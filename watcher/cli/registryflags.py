"""The registry transport flags every registry command takes, declared once.

``push``, ``sign``, ``verify``, ``promote``, ``plan history|diff|rollback`` all talk to a
registry and all take the same five flags (``watcher.cli.transport`` says what each one
means). A command asks for them with one parameter, ``registry: RegistryFlags``, and the
``@registry_flags`` decorator turns that parameter into the five options typer shows in
the command's ``--help``, in its place, and hands the command the parsed flags, which
build the registry client (``RegistryFlags.client``) when the command needs one.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from watcher.cli import state
from watcher.cli.transport import (
    AuthfileOpt,
    CaOpt,
    InsecureOpt,
    PlainHttpOpt,
    TlsVerifyOpt,
    verify_tls,
)

if TYPE_CHECKING:
    from publisher.registry import RegistryClient

T = TypeVar("T")

#: The parameter a command declares to receive the flags.
PARAMETER = "registry"


@dataclass(frozen=True)
class RegistryFlags:
    """The transport flags as given on one command line (field order is --help order)."""

    plain_http: PlainHttpOpt = None
    insecure: InsecureOpt = False
    tls_verify: TlsVerifyOpt = None
    ca_bundle: CaOpt = None
    authfile: AuthfileOpt = None

    def client(self, ctx: typer.Context) -> RegistryClient:
        """A registry client with the workspace's [registry] settings and these flags on top."""
        import structlog

        from publisher.authfile import auth_file
        from publisher.inputs import check_regular
        from publisher.registry import client_from_config

        if "--secure" in sys.argv:
            structlog.get_logger(__name__).warning(
                "--secure is deprecated: use --no-plain-http (HTTPS is the default off loopback)"
            )
        if self.ca_bundle is not None:
            check_regular(self.ca_bundle, "CA bundle")
        path = auth_file(self.authfile)
        if self.authfile is not None:
            check_regular(self.authfile, "credentials")
        return client_from_config(
            state(ctx).settings.registry,
            insecure=self.plain_http,
            ca_bundle=self.ca_bundle,
            tls_verify=verify_tls(self.insecure, self.tls_verify),
            authfile=path,
        )


#: The default a command's ``registry`` parameter declares (typer never sees it).
NO_FLAGS = RegistryFlags()


def _flag_parameters() -> list[inspect.Parameter]:
    hints = inspect.get_annotations(RegistryFlags, eval_str=True)
    return [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in fields(RegistryFlags)
    ]


def registry_flags(command: Callable[..., T]) -> Callable[..., T]:
    """Show ``command``'s ``registry: RegistryFlags`` parameter as the five flags.

    Put it under the typer decorator (``@app.command(...)`` then ``@registry_flags``).
    """
    signature = inspect.signature(command, eval_str=True)
    if PARAMETER not in signature.parameters:
        raise TypeError(f"{command.__name__} has no {PARAMETER!r} parameter")
    flags = _flag_parameters()
    names = [p.name for p in flags]
    shown: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == PARAMETER:
            shown += flags
        elif param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            shown.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        else:
            shown.append(param)

    @functools.wraps(command)
    def with_flags(*args: Any, **kwargs: Any) -> T:
        given = RegistryFlags(**{name: kwargs.pop(name) for name in names})
        return command(*args, **{PARAMETER: given}, **kwargs)

    with_flags.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]
    with_flags.__annotations__ = {p.name: p.annotation for p in shown}
    return with_flags
