"""`cloudboot doctor`: one preflight of everything `cloudboot up` needs on this host.

This module gathers the facts (PATH lookups, `vfkit --version`, firmware files, the
recipe, one /v2/ request to a registry that is not embedded); watcher/preflight.py
judges them. `cloudboot up` calls ``preflight_or_stop`` before it starts anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.errors import CloudbootError
from watcher.cli import state

if TYPE_CHECKING:
    from publisher.config import Config
    from watcher.preflight import Facts, Finding

#: Tools a check looks up on PATH (mkfs.ext4 also in Homebrew's keg).
TOOLS = ("apt-get", "dpkg-deb", "zstd", "docker-registry", "vfkit",
         "qemu-system-x86_64", "qemu-system-aarch64")  # fmt: skip


def _vfkit_version(path: str | None) -> str | None:
    if not path:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (proc.stdout or proc.stderr).strip()


def gather(config: Config) -> Facts:
    """The facts about this host and workspace that the checks need."""
    from publisher.demodisk import find_mkfs_ext4
    from publisher.localregistry import registry_at
    from publisher.media.recipe import load_recipe
    from watcher.preflight import Facts
    from watcher.vm.firmware import CANDIDATES, DEBIAN_PACKAGE
    from watcher.vm.spec import VmSpec

    tools: dict[str, str | None] = {tool: shutil.which(tool) for tool in TOOLS}
    tools["mkfs.ext4"] = find_mkfs_ext4()
    arch = config.vm_arch()
    backend = VmSpec.from_config(config).backend.value
    firmware = next((code for code, vars_ in CANDIDATES[arch]
                     if _exists(code) and _exists(vars_)), None)  # fmt: skip
    recipe_error, base, compression, cmdline = None, None, "zstd", ""
    try:
        recipe = load_recipe(config.build.recipe)
        base, compression = recipe.base, recipe.initramfs.compression.value
        cmdline = recipe.cmdline
    except CloudbootError as exc:
        recipe_error = str(exc)
    registry = config.registry
    return Facts(
        system=sys.platform,
        python=(sys.version_info[0], sys.version_info[1]),
        backend=backend,
        vm_arch=arch.value,
        tools=tools,
        vfkit_version=_vfkit_version(tools["vfkit"]) if backend == "vfkit" else None,
        firmware=firmware,
        firmware_package=DEBIAN_PACKAGE.get(arch, ""),
        registry_url=registry.url,
        registry_embedded=registry.embedded,
        registry_server=registry.server.value,
        registry_reachable=None if registry.embedded else registry_at(registry.url) is None,
        signing_key=config.signing.key.is_file(),
        public_key=config.signing.public_key.is_file(),
        key_path=str(config.signing.key),
        recipe_error=recipe_error,
        base=base,
        compression=compression,
        demo_disk=not config.vm.disks,
        plan_cmdline=cmdline,
    )


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def render(findings: list[Finding]) -> str:
    from watcher.preflight import blocking

    lines = [str(f) for f in findings]
    missing = blocking(findings)
    lines.append(
        f"{len(missing)} missing" if missing else "everything `cloudboot up` needs is here"
    )
    return "\n".join(lines)


def preflight_or_stop(config: Config, *, vm: bool = True, demo_disk: bool = True) -> None:
    """What `cloudboot up` runs first: stop with the whole list if anything is missing."""
    import dataclasses

    from watcher.preflight import blocking, check

    facts = gather(config)
    if not (vm and demo_disk):
        facts = dataclasses.replace(facts, demo_disk=False)
    findings = check(facts, vm=vm)
    missing = blocking(findings)
    if missing:
        raise CloudbootError(
            "cloudboot doctor: not everything `cloudboot up` needs is here:\n"
            + "\n".join(str(f) for f in missing)
        )


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check Python, the VM backend, the registry, boot inputs, disk tools, the signing key
    and the guest's route to the registry; print what is missing with the command that
    fixes it. Exit status 1 when `cloudboot up` could not work."""
    from watcher.preflight import blocking, check

    findings = check(gather(state(ctx).config))
    if as_json:
        typer.echo(json.dumps({"ok": not blocking(findings),
                               "findings": [f.to_json() for f in findings]}, indent=2))  # fmt: skip
    else:
        typer.echo(render(findings))
    if blocking(findings):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
