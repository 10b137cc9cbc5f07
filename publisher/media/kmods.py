"""Kernel modules for the initramfs: find them by name and close over their dependencies.

Debian ships no ``modules.dep`` in the package (depmod writes it at install time), so
the dependencies are read from each module's own ``.modinfo`` ``depends=`` string, and a
``modules.dep`` for busybox ``modprobe`` is written into the initramfs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from guest.contract.errors import CloudbootError

_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")


class ModuleError(CloudbootError):
    pass


def module_key(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike (``nls_cp437`` = ``nls-cp437``)."""
    return name.replace("-", "_")


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a .ko (from its .modinfo strings)."""
    match = _DEPENDS.search(ko)
    if not match or not match.group(1):
        return []
    return [module_key(d) for d in match.group(1).decode().split(",") if d]


def index_modules(modules_dir: Path) -> dict[str, Path]:
    """Module name -> .ko path under ``lib/modules/<uname>``."""
    return {module_key(p.name.split(".ko")[0]): p for p in modules_dir.rglob("*.ko*")}


def builtin_modules(modules_dir: Path) -> set[str]:
    builtin = modules_dir / "modules.builtin"
    if not builtin.is_file():
        return set()
    return {module_key(Path(line).name.split(".ko")[0]) for line in builtin.read_text().split()}


def resolve(
    wanted: Iterable[str],
    available: Mapping[str, Path],
    builtin: set[str],
    read: Mapping[str, bytes] | None = None,
) -> list[str]:
    """The wanted modules plus dependencies, dependencies first (load order).

    A wanted module built into the kernel is fine and skipped; one that exists nowhere is
    an error naming it.
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name not in available:
            via = f" (needed by {' -> '.join(chain)})" if chain else ""
            raise ModuleError(f"kernel module {name!r} not found{via}")
        seen.add(name)
        data = read[name] if read and name in read else available[name].read_bytes()
        for dep in module_depends(data):
            visit(dep, (*chain, name))
        order.append(name)

    for name in wanted:
        visit(module_key(name), ())
    return order


def modules_dep(order: list[str], available: Mapping[str, Path], modules_dir: Path) -> str:
    """A depmod-style ``modules.dep`` for the chosen modules, paths relative to ``modules_dir``.

    Each line lists the module's transitive dependencies in reverse load order, as
    depmod writes them (modprobe loads from the end of the list).
    """
    direct = {name: module_depends(available[name].read_bytes()) for name in order}

    def closure(name: str) -> list[str]:
        out: list[str] = []
        for dep in direct.get(name, []):
            for d in [*closure(dep), dep]:
                if d not in out and d in available:
                    out.append(d)
        return out

    def rel(name: str) -> str:
        return available[name].relative_to(modules_dir).as_posix()

    lines = [f"{rel(n)}: {' '.join(rel(d) for d in reversed(closure(n)))}".rstrip() for n in order]
    return "\n".join(lines) + "\n"
