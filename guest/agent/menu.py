"""The console menu (docs/wire-formats.md §5.3): arch-eligible targets, ``*`` on the default,
a countdown.

Input is empty (the default), a number, a name, or a unique prefix of a name. Rendering
and choosing are pure functions; ``ask`` waits on several consoles at once (serial and
/dev/tty*) with ``select`` so whichever the user types into wins.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guest.agent.cmdline import Options
    from guest.agent.console import Console
    from guest.contract.plan import EvaluatedPlan


@dataclass(frozen=True)
class Entry:
    """One line of the boot menu: a target's name, its label and version."""

    name: str
    label: str
    version: str = ""


def render(entries: Sequence[Entry], default: str, prompt: str) -> str:
    lines = []
    for i, entry in enumerate(entries, 1):
        mark = "*" if entry.name == default else " "
        version = f" ({entry.version})" if entry.version else ""
        label = entry.label if entry.label == entry.name else f"{entry.label} [{entry.name}]"
        lines.append(f" {mark} {i}) {label}{version}")
    return "\n".join(lines) + f"\n{prompt} "


def choose(entries: Sequence[Entry], default: str, answer: str) -> str | None:
    """The chosen target name, or None when the answer picks nothing (ask again)."""
    text = answer.strip()
    if not text:
        return default
    if text.isdigit():
        n = int(text)
        return entries[n - 1].name if 1 <= n <= len(entries) else None
    for entry in entries:
        if entry.name == text:
            return entry.name
    matches = {e.name for e in entries if e.name.startswith(text)}
    return matches.pop() if len(matches) == 1 else None


def ask(fds: Sequence[int], timeout_s: float | None) -> str | None:
    """One line from whichever fd has it first; None when the countdown runs out."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    buffers = {fd: b"" for fd in fds}
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            return None
        ready, _w, _x = select.select(list(fds), [], [], None if wait is None else min(wait, 1.0))
        for fd in ready:
            try:
                chunk = os.read(fd, 256)
            except OSError:
                continue
            buffers[fd] += chunk
            if b"\n" in buffers[fd] or b"\r" in buffers[fd]:
                line = buffers[fd].replace(b"\r", b"\n").split(b"\n", 1)[0]
                return line.decode("utf-8", errors="replace")


def run_menu(
    console: Console, fds: Sequence[int], evaluated: EvaluatedPlan, options: Options
) -> str:
    """Show the menu until a target is chosen or the countdown picks the default.

    The plan's ``menu`` block sets the countdown and prompt; ``cloudboot.menu.timeout``
    and ``cloudboot.menu.prompt`` override it (as upstream does). After a wrong answer
    the countdown stops: someone is at the console.
    """
    from guest.contract import plan

    entries = [Entry(t.name, t.label, t.version) for t in evaluated.eligible_targets()]
    default = evaluated.default_target or entries[0].name
    timeout = evaluated.menu.timeout_s if evaluated.menu else None
    if options.menu_timeout is not None:
        timeout = plan.parse_timeout(options.menu_timeout)
    prompt = options.menu_prompt or (
        evaluated.menu.prompt if evaluated.menu else plan.DEFAULT_MENU_PROMPT
    )
    while True:
        countdown = f" [{default} in {timeout:g}s]" if timeout is not None else ""
        console.write(render(entries, default, prompt + countdown))
        answer = ask(fds, timeout)
        if answer is None:
            console.write("\n")
            return default
        chosen = choose(entries, default, answer)
        if chosen:
            return chosen
        console.write(f"no target matches {answer!r}\n")
        timeout = None
