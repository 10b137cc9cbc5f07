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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import state
from watcher.cli.registry import loopback_host_port

if TYPE_CHECKING:
    from publisher.config import Config


def demo_disk_path(config: Config) -> Path:
    """One demo disk per arch: its kernel must be the one the VM's firmware can boot."""
    return config.root / "build" / f"demo-target-{config.vm_arch().value}.raw"


def ensure_signing_key(config: Config) -> None:
    """Create cosign.key/cosign.pub on first use, encrypted with $COSIGN_PASSWORD.

    Without $COSIGN_PASSWORD the demo key gets an empty password (as `cosign
    generate-key-pair` allows); say so, because a real key deserves a real password.
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
        os.environ[PASSWORD_ENV] = ""
    write_key_pair(config.signing.key, config.signing.public_key, os.environ[PASSWORD_ENV].encode())
    typer.echo(f"created signing key {config.signing.key} and {config.signing.public_key}")


def start_registry(config: Config, stack: contextlib.ExitStack) -> None:
    """Start the embedded registry unless something already serves [registry].url."""
    from publisher.localregistry import local_registry, port_in_use

    if not config.registry.embedded:
        return
    host, port = loopback_host_port(config.registry.url)
    if port_in_use(host, port):
        typer.echo(f"registry: using the one already listening on {host}:{port}")
        return
    reg = stack.enter_context(
        local_registry(
            config.root / ".cloudboot" / "registry-run",
            host=host,
            port=port,
            storage=config.registry.storage,
        )
    )
    typer.echo(f"registry: started {reg.url} (storage {reg.storage})")


def with_demo_disk(config: Config, enabled: bool) -> Config:
    """Attach the demo target disk when the workspace names no chained-distro disk."""
    if not enabled or config.vm.disks:
        return config
    from publisher.demodisk import ensure_demo_disk

    disk = ensure_demo_disk(demo_disk_path(config), config.vm_arch())
    typer.echo(f"demo target disk: {disk.path} (kernel {disk.kernel_release})")
    return dataclasses.replace(config, vm=dataclasses.replace(config.vm, disks=[disk.path]))


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
) -> None:
    """Set up and run the live-reload loop: registry, key, publish, build, VM, watch."""
    from publisher.media.build import build_boot_iso
    from publisher.media.cachedisk import ensure_cache_disk
    from publisher.media.recipe import load_recipe
    from publisher.registry import client_from_config
    from publisher.workspace import format_outcomes, load_signing_key, publish_workspace
    from watcher.cli.watch import run_daemon
    from watcher.vm import VmSpec, VmState, open_backend
    from watcher.watch.adapters import BackendVmStage

    config = state(ctx).config
    with contextlib.ExitStack() as stack:
        ensure_signing_key(config)
        start_registry(config, stack)
        outcomes = publish_workspace(config)
        typer.echo(format_outcomes(outcomes))
        if any(not o.ok for o in outcomes):
            raise CloudbootError("fix the plans above, then run `cloudboot up` again")
        key = load_signing_key(config)
        result = build_boot_iso(
            load_recipe(config.build.recipe),
            config.build.iso,
            config.media_arches(),
            signing_key=key,
            registry=lambda: client_from_config(config.registry),
        )
        typer.echo(f"boot.iso: {result.output} ({'unchanged' if result.skipped else 'built'})")
        if ensure_cache_disk(config.build.cache_disk, config.build.cache_disk_size_mib):
            typer.echo(f"cache disk: created {config.build.cache_disk}")
        vm_stage = None
        if vm:
            config = with_demo_disk(config, demo_disk)
            backend = open_backend(VmSpec.from_config(config))
            if backend.status().state is not VmState.RUNNING:
                status = backend.up(reset_nvram=True)
                stack.callback(backend.down, timeout=config.vm.stop_timeout_ms / 1000)
                typer.echo(f"vm: started pid {status.pid}; serial log {backend.spec.serial_log}")
                typer.echo("    follow it with: cloudboot vm console")
            vm_stage = BackendVmStage(backend, stop_timeout_s=config.vm.stop_timeout_ms / 1000)
            vm_stage.supervise()  # vfkit: relaunch after the guest's reboot into its target
        typer.echo("watching plans/ and kernel/ (Ctrl-C stops the watcher, VM and registry)")
        run_daemon(config, vm_stage=vm_stage, initial=False)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
