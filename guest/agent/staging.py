"""The agent's two writes, in order: the target's files on the cache ESP (step "write"),
then Boot0001 and BootOrder (step "nvram"); docs/ARCHITECTURE.md §3 steps 7 and 8.

``guest.agent.stage`` holds the formats and the single operations; this module is the
sequence the agent runs with them, so the checks that must come before any byte is
written (Secure Boot's signature rule, the cache disk's marker) stay in one place.
"""

from __future__ import annotations

from guest.agent import stage
from guest.agent.console import Console
from guest.agent.kexec import Staged
from guest.agent.machine import Paths, System
from guest.contract.efi.efivarfs import EfiVarStore


def write_esp(
    system: System,
    console: Console,
    paths: Paths,
    target: str,
    staged: Staged,
    content: str | None,
    floor_doc: bytes | None = None,
) -> stage.CacheEsp:
    """Stage ``target``'s kernel and initrd on the cache ESP (kept when the stamp says
    the same ``content`` is there), with the raised freshness floor when given."""
    from guest.agent.secureboot import require_signed_under_secure_boot

    system.ensure_efivars(paths.efivars)
    store = EfiVarStore(paths.efivars)
    require_signed_under_secure_boot(store, staged.kernel, target)
    if content is not None and stage.came_back(store, target):
        console.warn(f"Boot0001 for {target!r} was already set: writing its files again")
        content = None
    esp, warnings = stage.choose_cache_esp(paths.sys, paths.dev, paths.efivars)
    for warning in warnings:
        console.warn(warning)
    with system.open_esp(esp) as files:
        stage.require_marker(files)  # before the floor too
        if floor_doc is not None:
            from guest.agent import floor

            files.write(floor.FLOOR_PATH, floor_doc)
        written = stage.write_files(files, target, staged.kernel, staged.initrd, content)
    sizes = f"{stage.data_size(staged.kernel)} + {stage.data_size(staged.initrd or b'')}"
    if written:
        console.log(f"staged {sizes} bytes on {esp.device.name}")
    else:
        console.log(f"kept the staged {sizes} bytes on {esp.device.name} (same content)")
    return esp


def write_nvram(
    system: System, paths: Paths, target: str, esp: stage.CacheEsp, staged: Staged
) -> None:
    """Boot0001 (the staged files on ``esp``, the cmdline as optional data), first in
    BootOrder."""
    system.ensure_efivars(paths.efivars)
    stage.write_boot_entry(
        EfiVarStore(paths.efivars),
        target,
        esp,
        staged.cmdline,
        has_initrd=staged.initrd is not None,
    )
