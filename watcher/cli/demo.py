"""`cloudboot up`: the whole live-reload loop for a workspace, in one command.

It brings up everything the loop needs that is missing (a signing key, the embedded
registry, boot.iso, the cache disk, a demo target disk when no chained distro is
configured), publishes the plans, boots the VM with a fresh NVRAM store and then watches
plans/ and kernel/ exactly as `cloudboot watch` does. Ctrl-C stops the watcher, the VM it
started and the registry it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import state
from watcher.cli.loopview import ConsoleOption
from watcher.cli.registry import loopback_host_port

if TYPE_CHECKING:
    from publisher.config import Config
    from publisher.demodisk import DemoDisk
    from publisher.media.debs import DebCache


def demo_disk_path(config: Config) -> Path:
    """One demo disk per arch: its kernel must be the one the VM's firmware can boot."""
    return config.root / "build" / f"demo-target-{config.vm_arch().value}.raw"


def ensure_signing_key(config: Config) -> None:
    """Create cosign.key/cosign.pub on first use, encrypted with $COSIGN_PASSWORD.

    Without $COSIGN_PASSWORD the demo key gets an empty password (as `cosign
    generate-key-pair` allows); say so, because a real key deserves a real password.
    Later runs without $COSIGN_PASSWORD open it with the empty password
    (``publisher.signing.load_key_file``).
    """
    import structlog

    from publisher.signing import PASSWORD_ENV, write_key_pair

    if config.signing.key.is_file():
        return
    if PASSWORD_ENV not in os.environ:
        structlog.get_logger(__name__).warning(
            "no $COSIGN_PASSWORD: creating the signing key with an empty password",
            key=str(config.signing.key),
        )
    password = os.environ.get(PASSWORD_ENV, "").encode()
    write_key_pair(config.signing.key, config.signing.public_key, password)
    typer.echo(f"created signing key {config.signing.key} and {config.signing.public_key}")


def start_registry(config: Config, stack: contextlib.ExitStack) -> None:
    """Start the embedded registry unless something already serves [registry].url."""
    from publisher.localregistry import local_registry, port_in_use, registry_at

    if not config.registry.embedded:
        return
    host, port = loopback_host_port(config.registry.url)
    if port_in_use(host, port):
        if (answer := registry_at(config.registry.url)) is not None:
            raise CloudbootError(
                f"something listens on {host}:{port} but it is not an OCI registry ({answer});"
                " stop it, or give [registry].url another port",
                where="[registry].url",
            )
        typer.echo(f"registry: using the one already listening on {host}:{port}")
        return
    reg = stack.enter_context(
        local_registry(
            config.root / ".cloudboot" / "registry-run",
            host=host,
            port=port,
            storage=config.registry.storage,
            implementation=config.registry.server.value,
        )
    )
    typer.echo(f"registry: started {reg.implementation} {reg.url} (storage {reg.storage})")


def attach_demo_disk(
    config: Config, debs: DebCache | None = None
) -> tuple[Config, DemoDisk | None]:
    """The config with the demo target disk attached when it names no chained-distro disk
    (made if missing), and that disk (None when the config named its own)."""
    if config.vm.disks:
        return config, None
    from publisher.demodisk import ensure_demo_disk

    disk = ensure_demo_disk(demo_disk_path(config), config.vm_arch(), cache=debs)
    return _with_disk(config, disk.path), disk


def _with_disk(config: Config, disk: Path) -> Config:
    return dataclasses.replace(config, vm=dataclasses.replace(config.vm, disks=[disk]))


def demo_disk_if_made(config: Config) -> Config:
    """The VM `up` boots, for the commands that start it again (`vm up`, `vm restart`,
    `watch`): the demo target disk attached when the config names no disk of its own and
    `up` has made it. Without it a restarted demo VM lost its target disk (the agent:
    FATAL, no device matches LABEL=cbtarget) and the firmware's settled store, which is
    keyed by the argv."""
    if config.vm.disks or not demo_disk_path(config).exists():
        return config
    return _with_disk(config, demo_disk_path(config))


def with_demo_disk(config: Config, enabled: bool, debs: DebCache | None = None) -> Config:
    """Attach the demo target disk when the workspace names no chained-distro disk.

    ``debs``: where its pieces come from (the recipe's base artifact, else apt). A canary
    boot (`cloudboot publish --canary`) gets the same disks through ``attach_demo_disk``."""
    if not enabled:
        return config
    config, disk = attach_demo_disk(config, debs)
    if disk is not None:
        typer.echo(f"demo target disk: {disk.path} (kernel {disk.kernel_release})")
    return config


def up(
    ctx: typer.Context,
    vm: Annotated[bool, typer.Option("--vm/--no-vm", help="Boot and live-restart the VM.")] = True,
    demo_disk: Annotated[
        bool,
        typer.Option(
            "--demo-disk/--no-demo-disk",
            help="Attach a generated target disk (Debian kernel) when [vm].disks is empty.",
        ),
    ] = True,
    preflight: Annotated[
        bool,
        typer.Option("--preflight/--no-preflight", help="Run `cloudboot doctor`'s checks first."),
    ] = True,
    console: ConsoleOption = False,
) -> None:
    """Set up and run the live-reload loop: registry, key, publish, build, VM, watch.

    Each boot and reload ends in one result line: the target that came up (or the guest's
    FATAL line and hint), the time since the edit and where it went."""
    from publisher.media.base import packages_for
    from publisher.media.build import build_from_config
    from publisher.media.cachedisk import ensure_cache_disk
    from publisher.media.recipe import load_recipe
    from publisher.registry import client_from_config
    from publisher.workspace import format_outcomes, load_signing_key, publish_workspace
    from watcher.cli.loopview import LoopView, loop_watch
    from watcher.cli.watch import open_status, run_daemon
    from watcher.vm import VmSpec, VmState, open_backend
    from watcher.watch.adapters import BackendVmStage, host_stager
    from watcher.watch.reload import ReloadStart
    from watcher.watch.sole import sole_watcher

    began = time.time()
    cli = state(ctx)
    config = cli.config
    if preflight:  # writes nothing, so it comes before even the lock file
        from watcher.cli.doctor import preflight_or_stop

        preflight_or_stop(config, vm=vm, demo_disk=demo_disk)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sole_watcher(config.root, "up"))  # before anything is touched
        ensure_signing_key(config)
        start_registry(config, stack)
        t_publish = time.perf_counter()
        outcomes = publish_workspace(config)
        publish_s = time.perf_counter() - t_publish
        typer.echo(format_outcomes(outcomes))
        if failing := {o.status for o in outcomes if not o.ok}:
            what = []  # a plan's fault (invalid, held by its canary), a registry's ("failed")
            if failing - {"failed"}:
                what.append("fix the plans above")
            if "failed" in failing:
                what.append(f"a publish to {config.registry.url} failed: see why above")
            raise CloudbootError(f"{'; '.join(what)}, then run `cloudboot up` again")
        key = load_signing_key(config)
        recipe = load_recipe(config.build.recipe)
        debs = packages_for(recipe.base, recipe.cosign_public_key,
                            lambda: client_from_config(config.registry))  # fmt: skip
        result = build_from_config(config, key, cache=debs)
        typer.echo(f"boot.iso: {result.output} ({'unchanged' if result.skipped else 'built'})")
        if ensure_cache_disk(config.build.cache_disk, config.build.cache_disk_size_mib):
            typer.echo(f"cache disk: created {config.build.cache_disk}")
        vm_stage, book = None, open_status(config)
        view = LoopView.for_command(cli.log_format, console=console, always=True)
        watch = None
        if vm:
            config = with_demo_disk(config, demo_disk, debs)
            backend = open_backend(VmSpec.from_config(config))
            watch = stack.enter_context(loop_watch(book, backend.spec.serial_log, view))
            started = backend.status().state is not VmState.RUNNING
            if started:
                mark, t_start = watch.mark(), time.time()
                backend.up(reset_nvram=True)  # logs "vm started" with its pid
                stack.callback(backend.down, timeout=config.vm.stop_timeout_ms / 1000)
                follow = "" if console else " (follow it with --console or `cloudboot vm console`)"
                typer.echo(f"vm: serial log {backend.spec.serial_log}{follow}")
                # The first boot reports like a reload, timed from `up` itself.
                watch.begin(ReloadStart(mark, began, t_start, time.time(), publish_s, first=True))
            vm_stage = BackendVmStage(backend, stop_timeout_s=config.vm.stop_timeout_ms / 1000,
                                      host_stage=host_stager(config, backend.spec))  # fmt: skip
            if started:
                vm_stage.hand_off_reboot()  # QEMU/TCG: the second pass in a fresh process
            vm_stage.supervise()  # relaunch after the guest's reboot into its target
        typer.echo("watching plans/ and kernel/ (Ctrl-C stops the watcher, VM and registry)")
        run_daemon(config, vm_stage=vm_stage, initial=False, loop=(book, watch))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
