"""`cloudboot vm ...`: start, stop, restart, reset and inspect the workspace's VM.

Each call is its own process: the VM runs detached and is found again through the
pidfile and control socket in [vm].state_dir, so `vm up` in one terminal and
`vm status` / `vm down` in another work on the same VM.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from watcher.cli import state
from watcher.cli.errors import json_path

if TYPE_CHECKING:  # watcher.vm (and structlog with it) loads when a command runs
    from watcher.vm import VmBackend, VmStatus

vm_app = typer.Typer(
    rich_markup_mode=None,
    help="Control the VM (vfkit on macOS, QEMU elsewhere).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds the guest gets to stop before a hard stop.")
]


def _backend(ctx: typer.Context) -> VmBackend:
    from watcher.cli.demo import demo_disk_if_made
    from watcher.vm import VmSpec, open_backend

    return open_backend(VmSpec.from_config(demo_disk_if_made(state(ctx).config)))


def _format_status(st: VmStatus) -> str:
    from watcher.vm import VmState

    lines = [f"state:   {st.state.value}" + (f" ({st.guest_state})" if st.guest_state else "")]
    lines.append(f"backend: {st.backend}")
    if st.pid is not None:
        lines.append(f"pid:     {st.pid}")
    if st.uptime_s is not None:
        lines.append(f"uptime:  {st.uptime_s:.0f} s")
    nv = st.nvram
    if not nv.exists:
        nvram_text = "(not created yet)"
    elif nv.settled:
        nvram_text = f"{nv.size} bytes, the firmware's settled store (as a restart leaves it)"
    elif nv.pristine is None:
        nvram_text = f"{nv.size} bytes"
    else:
        nvram_text = f"{nv.size} bytes, {'pristine template' if nv.pristine else 'modified'}"
    lines.append(f"nvram:   {nv.path} {nvram_text}")
    if st.state is VmState.EXITED:
        lines.append("note:    the VM stopped on its own (guest reboot, crash or kill)")
    if st.serial_tail:
        lines.append("serial (last boot):")
        lines += [f"  {line}" for line in st.serial_tail]
    return "\n".join(lines)


@vm_app.command("up")
def up(
    ctx: typer.Context,
    reset_nvram: Annotated[
        bool, typer.Option("--reset-nvram", help="Start from a fresh NVRAM (back to the menu).")
    ] = False,
    supervise: Annotated[
        bool,
        typer.Option(
            "--supervise",
            help="Stay in the foreground and relaunch the VM when it stops on its own "
            "(vfkit exits on a guest reboot); Ctrl-C leaves the VM running.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start the VM (detached); does nothing if it is already running."""
    backend = _backend(ctx)
    st = backend.up(reset_nvram=reset_nvram)
    if as_json:
        doc = {"ok": True, **st.to_json(), "serial_log": json_path(backend.spec.serial_log)}
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"vm running (pid {st.pid}); serial log: {backend.spec.serial_log}")
    if supervise:
        from watcher.vm.supervisor import Supervisor

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            Supervisor(backend).run(stop)


@vm_app.command("down")
def down(ctx: typer.Context, timeout: TimeoutOption = 5.0, as_json: JsonOption = False) -> None:
    """Stop the VM: ask the guest, then hard-stop, then signal the process."""
    was_running = _backend(ctx).down(timeout)
    if as_json:
        typer.echo(json.dumps({"ok": True, "was_running": was_running, "state": "stopped"}))
    else:
        typer.echo("vm stopped" if was_running else "vm was not running")


@vm_app.command("restart")
def restart(
    ctx: typer.Context,
    reset_nvram: Annotated[
        bool,
        typer.Option("--reset-nvram", help="Replace the NVRAM store so the guest re-stages."),
    ] = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Stop and start the VM; with --reset-nvram the guest agent runs again."""
    st = _backend(ctx).restart(reset_nvram, stop_timeout=timeout)
    reset = ", NVRAM reset" if reset_nvram else ""
    typer.echo(f"vm restarted (pid {st.pid}{reset})")


@vm_app.command("reset-nvram")
def reset_nvram(
    ctx: typer.Context,
    menu: Annotated[
        bool,
        typer.Option(
            "--menu",
            help="Only forget the staged target (delete Boot0001, drop it from BootOrder) "
            "and keep the rest of the QEMU vars file: the next boot shows the menu again.",
        ),
    ] = False,
) -> None:
    """Replace the stopped VM's NVRAM store (refused while it runs).

    With --menu the store is edited instead of replaced, as `cloudboot-reset` does in the
    guest: other variables (Secure Boot keys, OVMF's own boot entries) stay.
    """
    backend = _backend(ctx)
    if not menu:
        backend.reset_nvram()
        typer.echo(f"nvram reset: {backend.spec.nvram}")
        return
    from guest.contract.efi import CLOUDBOOT_BOOT_VARIABLE

    store = backend.spec.nvram
    typer.echo(
        f"nvram: {CLOUDBOOT_BOOT_VARIABLE} removed from {store}; the next boot shows the menu"
        if backend.forget_staged_target()
        else f"nvram: no staged target in {store}; nothing to do"
    )


@vm_app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """State, pid, uptime, NVRAM store and the tail of the last boot's serial log."""
    st = _backend(ctx).status()
    if as_json:
        typer.echo(json.dumps(st.to_json(), indent=2))
    else:
        typer.echo(_format_status(st))


@vm_app.command("console")
def console(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing new output (Ctrl-C ends).")
    ] = True,
) -> None:
    """Print the serial log since the last launch, then follow it."""
    from watcher.vm import VmError, VmSpec, VmState, open_backend
    from watcher.vm.state import load_record

    spec = VmSpec.from_config(state(ctx).config)
    record = load_record(spec.record_file)
    if record is None and not spec.serial_log.exists():
        raise VmError(
            f"no VM has run in this workspace (no serial log at {spec.serial_log}):"
            " start one with `cloudboot vm up` or `cloudboot up`"
        )
    offset = record.serial_offset if record else 0
    backend = open_backend(spec)
    running = backend.state() is VmState.RUNNING
    _follow(spec.serial_log, offset, follow and running, backend.state)
    if follow and not running:
        typer.echo("vm is not running: nothing more to follow", err=True)


def _follow(log: Path, offset: int, follow: bool, vm_state: Callable[[], object]) -> None:
    """Copy the log from ``offset`` to stdout; a truncated log is read from its start.

    Following ends when the VM stops (checked about once a second), so the command
    never waits forever on a VM that is gone; Ctrl-C ends it with 130.
    """
    from watcher.vm import VmState

    out = typer.get_binary_stream("stdout")
    polls = 0
    while True:
        try:
            with open(log, "rb") as f:
                size = f.seek(0, 2)
                if size < offset:
                    offset = 0
                f.seek(offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            data = b""
        if data:
            out.write(data)
            out.flush()
            offset += len(data)
            continue
        if not follow:
            return
        polls += 1
        if polls % 5 == 0 and vm_state() is not VmState.RUNNING:
            typer.echo("vm stopped", err=True)
            return
        time.sleep(0.2)


def register(app: typer.Typer) -> None:
    app.add_typer(vm_app, name="vm")
