"""The ``cloudboot`` command line.

This module owns only the root: global options, logging and turning our typed errors
into messages and exit codes. Each command group lives in its own module here and adds
itself through ``register(app)``, so the CLI stays a thin layer over library code.

Start-up time matters (`cloudboot --help`, `plan validate` in an editor hook, a GitOps
check of a thousand plans), so :func:`main` imports and registers only the module of the
command it was asked for (:data:`COMMAND_HOME`, :data:`SUBCOMMAND_HOME`; any other
command line, ``--help`` for one, gets the whole tree), and ``watcher.cli.app`` (tests,
completion) is the whole tree, built on first use. Group modules import only typer and
light guest/ modules at the top;
HTTP, crypto, HCL, image and watch libraries (and structlog, which pulls in rich) are
imported inside the commands that use them; logging is configured when structlog is
first imported (watcher/cli/logsetup.py), and typer's parameters skip pydantic where they
can (watcher/cli/coerce.py).
tests/test_cli_startup.py keeps it that way.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import coerce

if TYPE_CHECKING:
    from publisher.config import Config

#: Command-group modules, in --help order (a missing one is an ImportError, not a skip).
COMMAND_MODULES = (
    "init", "plan", "history", "push", "keys", "transport", "build", "vm", "watch", "registry",
    "demo", "doctor",
)  # fmt: skip

#: The module that registers each top-level command or group; tests/test_cli_startup.py
#: checks it against what the modules register.
COMMAND_HOME = {
    "init": "init", "plan": "plan", "promote": "history", "push": "push", "key": "keys",
    "sign": "keys", "verify": "keys", "verify-blob": "keys", "login": "transport",
    "logout": "transport", "build": "build", "cache-disk": "build", "kernel": "build",
    "vm": "vm", "watch": "watch", "status": "watch", "publish": "watch", "agent": "watch",
    "registry": "registry", "up": "demo", "doctor": "doctor",
}  # fmt: skip
#: Subcommands that a module adds to another module's group (checked the same way).
SUBCOMMAND_HOME = {
    ("plan", "history"): "history", ("plan", "diff"): "history", ("plan", "rollback"): "history",
}  # fmt: skip


def _root() -> typer.Typer:
    """The root command with its options and no groups yet."""
    root_app = typer.Typer(
        rich_markup_mode=None,
        name="cloudboot",
        help=(
            "Build, sign and publish cloud-boot plans and boot media, and live-reload a VM "
            "(vfkit on macOS, QEMU on Linux) whenever plans/ or kernel/ change."
        ),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    root_app.callback()(root)
    return root_app


def command_tree(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """A root command with the groups of ``modules`` (default: every group)."""
    tree = _root()
    for name in modules:
        importlib.import_module(f"watcher.cli.{name}").register(tree)
    return tree


@dataclass
class CliState:
    workspace: Path | None = None
    log_format: str = "auto"  # --log-format: `up`/`watch` print their results to match
    _config: Config | None = None

    @property
    def settings(self) -> Config:
        """The config, defaults outside a workspace (registry options of `verify`, `sign`)."""
        if self._config is None:
            from publisher.config import load_config

            if self.workspace is not None and not self.workspace.is_dir():
                what = "does not exist" if not self.workspace.exists() else "is not a directory"
                raise CloudbootError(
                    f"workspace directory {what}: pass an existing directory to -C/--workspace"
                    " (or create one with `cloudboot init DIR`)",
                    where=str(self.workspace),
                )
            self._config = load_config(self.workspace)
        return self._config

    @property
    def config(self) -> Config:
        """The workspace config, loaded on first use; outside any workspace, say how to make one.

        A directory named with -C is taken as the workspace (every default applies).
        """
        config = self.settings
        if self.workspace is None and config.source is None and not config.plans_dir.is_dir():
            raise CloudbootError(
                "not a cloudboot workspace (no cloudboot.toml or plans/ here or in a parent"
                " directory): run `cloudboot init` to create one, or pass -C DIR",
                where=str(config.root),
            )
        return config


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cloudboot")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cloudboot {_version()}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="More log detail: -v debug and tracebacks (repeatable: -vv).",
        ),
    ] = 0,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="auto (readable on a terminal, JSON lines otherwise), console or json.",
        ),
    ] = "auto",
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-C",
            help="Workspace root (cloudboot.toml, plans/, kernel/); default: found upwards.",
        ),
    ] = None,
    _: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    if log_format not in ("auto", "console", "json"):
        raise typer.BadParameter("expected auto, console or json", param_hint="--log-format")
    from watcher.cli.logsetup import LogFormat, configure_logging

    fmt: LogFormat = log_format  # type: ignore[assignment]
    configure_logging(verbose, fmt)
    ctx.obj = CliState(workspace=workspace, log_format=log_format)


coerce.install()  # typer's parameters without pydantic where that changes nothing


_whole_tree: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """``watcher.cli.app``: the whole command tree, built on first use."""
    global _whole_tree
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _whole_tree is None:
        _whole_tree = command_tree()
    return _whole_tree


def main() -> None:
    """Console-script entry: watcher.cli.errors turns every way a command ends into an exit code."""
    from watcher.cli.errors import run_cli

    run_cli(_tree_for, sys.argv[1:])


def _tree_for(words: tuple[str, ...]) -> typer.Typer:
    """The whole tree, or only what the command line needs (:func:`modules_for`)."""
    modules = modules_for(words)
    return command_tree(modules) if modules else command_tree()


def modules_for(words: tuple[str, ...]) -> tuple[str, ...]:
    """The modules that register the command ``words`` names (its group, and another
    module for one of the group's subcommands, or all of them for the group's own help);
    ``()``: unknown, so the whole tree (click then says what exists)."""
    if not words or words[0] not in COMMAND_HOME:
        return ()
    home = COMMAND_HOME[words[0]]
    if words[1:] and (guest := SUBCOMMAND_HOME.get((words[0], words[1]))):
        return (home, guest)
    if words[1:]:
        return (home,)
    guests = dict.fromkeys(m for (group, _), m in SUBCOMMAND_HOME.items() if group == words[0])
    return (home, *guests)
