"""`cloudboot watch`, `status`, `publish` and `agent install|uninstall|status`.

Thin: each command builds its objects from the workspace config, calls into
``watcher.watch`` and prints the result (``--json`` for machines); signals are wired
here because only the CLI owns the process.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import state
from watcher.cli.loopview import ConsoleOption, LoopView

if TYPE_CHECKING:  # the watch machinery (watchdog, publisher) loads when a command runs
    from publisher.config import Config
    from watcher.watch.pipeline import VmStage
    from watcher.watch.reload import ReloadWatch
    from watcher.watch.status import StatusBook

agent_app = typer.Typer(
    rich_markup_mode=None,
    help="Run `cloudboot watch` in the background (systemd user unit or launchd agent).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def watch(
    ctx: typer.Context,
    initial: Annotated[
        bool,
        typer.Option(
            "--initial/--no-initial",
            help="Publish every plan and build boot.iso once at start (else trust what is out).",
        ),
    ] = True,
    vm: Annotated[
        bool, typer.Option("--vm/--no-vm", help="Restart the VM (cleared NVRAM) on changes.")
    ] = True,
    debounce_ms: Annotated[
        int | None,
        typer.Option("--debounce-ms", min=0, help="Override [watch].debounce_ms."),
    ] = None,
    console: ConsoleOption = False,
) -> None:
    """Watch plans/ and kernel/; publish, rebuild and restart the VM on every change.

    On a terminal (or with --log-format json) each reload ends in one result line."""
    from watcher.cli.demo import demo_disk_if_made
    from watcher.watch.adapters import vm_stage_for
    from watcher.watch.sole import sole_watcher

    cli = state(ctx)
    with sole_watcher(cli.config.root, "watch"):
        config = demo_disk_if_made(cli.config) if vm else cli.config
        run_daemon(
            config,
            vm_stage=vm_stage_for(config) if vm else None,
            initial=initial,
            debounce_ms=debounce_ms,
            view=LoopView.for_command(cli.log_format, console=console, always=False),
        )


def run_daemon(
    config: Config,
    *,
    vm_stage: VmStage | None,
    initial: bool,
    debounce_ms: int | None = None,
    view: LoopView | None = None,
    loop: tuple[StatusBook, ReloadWatch | None] | None = None,
) -> None:
    """Run the watcher in this process until SIGTERM/SIGINT (a second one aborts at once).

    With a VM, the console is followed after each restart (``loop``: the status file and
    the console follower `up` opened before it booted the VM; else made here)."""
    with contextlib.ExitStack() as stack:
        if loop is None:
            loop = _open_loop(config, stack, vm_stage, view or LoopView(results=False))
        _run_daemon(config, vm_stage, initial, debounce_ms, *loop)


def open_status(config: Config) -> StatusBook:
    from watcher.watch.adapters import STATUS_FILE
    from watcher.watch.status import StatusBook

    return StatusBook(config.root / STATUS_FILE, watching=["plans/", "kernel/"])


def _open_loop(
    config: Config, stack: contextlib.ExitStack, vm_stage: VmStage | None, view: LoopView
) -> tuple[StatusBook, ReloadWatch | None]:
    from watcher.cli.loopview import loop_watch
    from watcher.vm import VmSpec

    status = open_status(config)
    if vm_stage is None:
        return status, None
    serial_log = VmSpec.from_config(config).serial_log
    return status, stack.enter_context(loop_watch(status, serial_log, view))


def _run_daemon(
    config: Config,
    vm_stage: VmStage | None,
    initial: bool,
    debounce_ms: int | None,
    status: StatusBook,
    reload_watch: ReloadWatch | None,
) -> None:
    import structlog

    from publisher.planrefs import check_plan_refs
    from publisher.workspace import find_plans
    from watcher.watch.adapters import reloader, setup_for
    from watcher.watch.daemon import WatchDaemon
    from watcher.watch.sdnotify import Notifier

    if config.plans_dir.is_dir():  # one ref per plan, or the tag flips between two plans
        check_plan_refs(config, find_plans(config))
    setup = setup_for(config, debounce_ms=debounce_ms)
    daemon = WatchDaemon(
        setup,
        status,
        vm_stage=vm_stage,
        notifier=Notifier(),
        reload=reloader(config.root, debounce_ms),
        initial_run=initial,
        reload_watch=reload_watch,
    )
    interrupts = 0

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:  # a second Ctrl-C / SIGTERM: abort without waiting
            raise KeyboardInterrupt
        structlog.get_logger(__name__).info("signal received", signal=signal.Signals(signum).name)
        daemon.request_stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_reload()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
    daemon.run()


def status_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show what the watcher did last: events, runs per stage, digests, VM state."""
    from watcher.watch.adapters import STATUS_FILE
    from watcher.watch.status import format_status, load_status, with_liveness

    config = state(ctx).config
    data = with_liveness(load_status(config.root / STATUS_FILE))
    if not data.get("alive"):
        data = _live_vm_state(config, data)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    text = format_status(data)
    if seen := data["vm"].get("last_seen_by_watcher") if not data.get("alive") else None:
        text += (
            f"\n(vm state checked now; the watcher is not running and last saw"
            f" {seen['state']} at {seen['at']})"
        )
    typer.echo(text)


def _live_vm_state(config: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The VM's state checked now: a stopped watcher's last record is history, not state."""
    from watcher.vm import VmSpec, open_backend

    vm = dict(data.get("vm") or {})
    seen, at = vm.get("state", "unknown"), data.get("updated_at") or data.get("started_at")
    try:
        vm["state"] = open_backend(VmSpec.from_config(config)).state().value
    except CloudbootError as exc:
        vm["state"] = f"{seen} as last seen at {at} by a watcher that is not running ({exc})"
    vm["last_seen_by_watcher"] = {"state": seen, "at": at}
    return {**data, "vm": vm}


def publish(
    ctx: typer.Context,
    as_json: JsonOption = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="Remove the tags of plan files deleted from plans/ (git history)."
        ),
    ] = False,
    summary: Annotated[
        Path | None,
        typer.Option(
            "--summary",
            help="Append a markdown table (plans, digests, canary) to this file, e.g."
            " $GITHUB_STEP_SUMMARY.",
        ),
    ] = None,
    canary: Annotated[
        bool | None,
        typer.Option(
            "--canary/--no-canary",
            help="Boot each changed plan from a staging tag in QEMU first; move its tag only"
            " if the target came up (default: [publish].canary).",
        ),
    ] = None,
) -> None:
    """Validate and publish every plan under plans/ once (for CI); exit 0 only if all did.

    Only changed plans are uploaded and signed; a deleted plan's tag is left (and
    reported) unless --prune. A progress bar goes to stderr on a terminal."""
    from publisher.workspace import format_outcomes, publish_workspace

    config = state(ctx).config  # two plans on one ref are refused first
    policy = None
    if config.publish.canary if canary is None else canary:
        from watcher.cli.demo import attach_demo_disk
        from watcher.vm.canary import canary_policy, check_canary

        check_canary(config)  # before the demo disk is made or anything is pushed
        config, _disk = attach_demo_disk(config)
        policy = canary_policy(config)
    outcomes = publish_workspace(config, prune=prune, progress=True, canary=policy)
    failed = [o for o in outcomes if not o.ok]
    doc = {"ok": not failed, "plans": [o.to_json() for o in outcomes]}
    if summary is not None:
        from publisher.summary import render

        with summary.open("a", encoding="utf-8") as stream:  # the CI's file: append
            stream.write(render(doc))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(format_outcomes(outcomes))
    if failed:
        message = f"{len(failed)} of {len(outcomes)} plans failed to publish"
        message += "".join(f"; {o.plan} {o.status}: {o.error}" for o in failed if o.canary)
        if as_json:  # the report above is the one JSON document on stdout
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1)
        raise CloudbootError(message)


KindOption = Annotated[
    str,
    typer.Option("--kind", help="auto (launchd on macOS, systemd elsewhere), systemd, launchd."),
]


def _kind(value: str) -> Any:
    from watcher.watch.service import AgentKind

    if value == "auto":
        return AgentKind.for_host()
    try:
        return AgentKind(value)
    except ValueError:
        raise typer.BadParameter("expected auto, systemd or launchd", param_hint="--kind") from None


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(f"{report.kind.value}: {report.path}")
    typer.echo(f"installed: {'yes' if report.installed else 'no'}, state: {report.state}")
    if report.hint:
        typer.echo(report.hint)


@agent_app.command("install")
def agent_install(
    ctx: typer.Context,
    kind: KindOption = "auto",
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Load and start it when possible.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Write the user service for this workspace and start it when a manager is reachable."""
    from watcher.watch.service import AgentSpec, cloudboot_argv, install, launchd_log_dir

    spec = AgentSpec(cloudboot_argv(), state(ctx).config.root, launchd_log_dir())
    _print_report(install(spec, _kind(kind), start=start), as_json)


@agent_app.command("uninstall")
def agent_uninstall(kind: KindOption = "auto", as_json: JsonOption = False) -> None:
    """Stop the user service and remove its file."""
    from watcher.watch.service import uninstall

    _print_report(uninstall(_kind(kind)), as_json)


@agent_app.command("status")
def agent_status(kind: KindOption = "auto", as_json: JsonOption = False) -> None:
    """Is the user service installed and running?"""
    from watcher.watch.service import status

    _print_report(status(_kind(kind)), as_json)


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)
    app.command("status")(status_cmd)
    app.command("publish")(publish)
    app.add_typer(agent_app, name="agent")
