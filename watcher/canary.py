"""Reading a canary boot's serial log: did the staged target come up, and where did it stop?

The canary gate (``publisher.canary``) lives on the publisher side and takes a callable;
booting needs QEMU and firmware, which are the watcher's (watcher -> publisher -> guest),
so the verdict on a boot is made here and handed down. This module is the pure part:
serial text in, verdict out, so it is the same for a QEMU or a vfkit boot.

Default success: the agent says it staged Boot0001 and reboots, the firmware then hands
over to ``Boot0001`` and a kernel starts its init (``Run /init as init process``): the
staged target's kernel took over and got as far as userspace, so a kernel that panics on
its root device does not count (it announces its version first). The hand-over only
counts after the agent's line: on a fresh NVRAM the firmware's own Boot0001 is the first
disk (boot.iso itself), so the agent's kernel also starts after a ``starting Boot0001``.
A success pattern per plan or target replaces all that (say, a service's ready line).
Failure patterns end the wait early: a kernel panic, the agent's ``FATAL:``, an
emergency shell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from publisher.canary import CanaryResult
from watcher.watch.reload import PANIC

STAGED = re.compile(r"cloud-boot: .*Boot0001.*reboot")  # the agent's last line
HANDOVER = re.compile(r"BdsDxe: starting Boot0001")  # the firmware, not the agent's own lines
KERNEL_UP = re.compile(r"Run /\S* as init process")
DEFAULT_FAILURES = (
    PANIC.pattern,
    r"^FATAL: ",
    r"cloud-boot: .*FATAL",
    r"You are in emergency mode|Entering emergency mode|emergency shell",
    r"Gave up waiting for (root|suspend/resume) device",
    r"VFS: Unable to mount root fs",
)
#: Milestones, in boot order: the last one seen is where a failed boot stopped.
MILESTONES = (
    ("firmware", re.compile(r"BdsDxe|UEFI firmware|EFI stub")),
    ("agent kernel", re.compile(r"Linux version \d")),
    ("agent", re.compile(r"cloud-boot: ")),
    ("plan fetched", re.compile(r"cloud-boot: .*plan", re.I)),
    ("plan verified", re.compile(r"cloud-boot: .*plan signature verified")),
    ("staged, rebooting", re.compile(r"cloud-boot: .*(Boot0001|reboot)", re.I)),
    ("hand-over to Boot0001", HANDOVER),
    ("target init", KERNEL_UP),
)
TAIL_LINES = 30


@dataclass(frozen=True)
class Patterns:
    """What counts as up, and what as failed, for one plan (or target)."""

    success: str | None = None  # None: the staged kernel's init after the Boot0001 hand-over
    failures: Sequence[str] = DEFAULT_FAILURES


def _tail(lines: Sequence[str]) -> str:
    return "\n".join(lines[-TAIL_LINES:])


def _stopped_at(lines: Sequence[str], until: int) -> str | None:
    """The last milestone reached, each looked for after the one before: the agent's own
    kernel also runs an init, which must not read as the target's."""
    reached, at = None, 0
    for name, pattern in MILESTONES:
        found = next((i for i in range(at, until) if pattern.search(lines[i])), None)
        if found is not None:
            reached, at = name, found + 1
    return reached


def _succeeded(lines: Sequence[str], patterns: Patterns) -> int | None:
    """The index of the line that proves the target up, or None."""
    if patterns.success is not None:
        wanted = re.compile(patterns.success)
        return next((i for i, line in enumerate(lines) if wanted.search(line)), None)
    at = -1
    for milestone in (STAGED, HANDOVER, KERNEL_UP):  # each after the one before
        found = next((i for i in range(at + 1, len(lines)) if milestone.search(lines[i])), None)
        if found is None:
            return None
        at = found
    return at


def staged(serial: str) -> bool:
    """Whether the agent said it staged Boot0001 and reboots (the first pass is over)."""
    return any(STAGED.search(line) for line in serial.splitlines())


def judge(serial: str, patterns: Patterns, finished: bool) -> CanaryResult | None:
    """The verdict on the serial log so far; None while it is still undecided.

    ``finished``: the VM exited or the wait timed out, so undecided means failed.
    """
    lines = serial.splitlines()
    failures = [re.compile(p, re.M) for p in patterns.failures]
    failed = next(
        ((i, p) for i, line in enumerate(lines) for p in failures if p.search(line)), None
    )
    up = _succeeded(lines, patterns)
    if failed is not None and (up is None or failed[0] < up):
        line = lines[failed[0]].strip()
        seen = lines[: failed[0] + 1]
        return CanaryResult(
            False, f"failure pattern: {line[:160]}", _stopped_at(seen, len(seen)), _tail(seen)
        )
    if up is not None:
        return CanaryResult(True, "booted", _stopped_at(lines, up + 1), _tail(lines[: up + 1]))
    if finished:
        why = "target did not come up" + ("" if lines else " (no serial output)")
        return CanaryResult(False, why, _stopped_at(lines, len(lines)), _tail(lines))
    return None
