"""What one reload did, read off the guest's serial console: the loop you can see.

After the watcher restarts the VM it follows the console until the guest either reaches a
target, dies with ``FATAL:`` or its kernel panics, then reports one result: which target
came up (or the FATAL or panic line and a hint), the time since the edit, and where that
time went. A console that stays quiet is said once while the watch goes on (a guest that
waits for input is quiet too), and a reload that never ends names the line the console
stopped at. The stage split is the one bench/edit_to_target.py reports (it calls
:func:`split_stages`), so the line `cloudboot up` prints and the bench's table are the
same numbers.

The console carries no host timestamps: :class:`~watcher.watch.lineclock.LineClock`
dates each line when it first appears. Parsing is pure (timed lines in, result out);
only :class:`ReloadWatch` owns a thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from watcher.watch.lineclock import LineClock

#: The demo target's marker line (publisher.demodisk.TARGET_MARKER); a real distro's
#: ``login:`` prompt counts as up too.
TARGET_UP = re.compile(r"CLOUDBOOT-TARGET-UP target=(\S+)|\blogin: *$")
STEP = re.compile(r"cloud-boot: \S+ step (\w+) ([\d.]+)s")
CHOSEN = re.compile(r"cloud-boot: \S+ target '([^']+)'")
STAGED = re.compile(r"Boot0001 = cloud-boot (\S+?);")
FATAL = re.compile(r"^FATAL: (.*)")
#: The kernel's last words: panic() prints this and the machine stops (or reboots into
#: the same panic, with panic=N). The bootstrap's kernel before Boot0001, else the target's.
PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
PANIC_HINTS = {
    False: "the bootstrap kernel panicked before the agent staged anything: check "
    "kernel/recipe.toml (cmdline, modules) and `cloudboot vm console` for the lines before it",
    True: "the target's kernel panicked: check the target's cmdline (root=, init=) and "
    "initrd in the plan, and `cloudboot vm console` for the lines before it",
}
HINT = re.compile(r"^hint: (.*)")
#: The kernel's own last line before a reboot; else the agent's last word before reboot(2).
REBOOTED = re.compile(r"reboot: Restarting system|kexec_core: Starting new kernel")

#: Stage key -> its label in bench/edit_to_target.py's table. They add up to the total.
STAGES: dict[str, str] = {
    "watcher": "watcher: edit -> VM restart requested",
    "vm": "VM stop + start",
    "firmware": "firmware + kernel + initramfs -> python ready",
    "agent": "agent steps",
    "menu": "menu wait",
    "agent_rest": "agent, rest (log, reboot(2))",
    "target": "reboot -> target marker",
}
#: The host loop's stages (no agent pass: the host staged while the VM was down).
HOST_STAGES: dict[str, str] = {
    "watcher": STAGES["watcher"],
    "vm": "VM stop + host staging + start",
    "boot": "firmware + target -> target marker",
}
#: How the compact result line names them.
SHORT = {"watcher": "watcher", "vm": "VM restart", "firmware": "firmware+kernel",
         "agent": "agent", "menu": "menu", "agent_rest": "agent rest",
         "target": "reboot -> target", "boot": "firmware+target"}  # fmt: skip

Lines = Sequence[tuple[float, str]]


def _first(lines: Lines, regex: re.Pattern[str]) -> tuple[float, re.Match[str]]:
    for seen, text in lines:
        if match := regex.search(text):
            return seen, match
    raise LookupError(f"no line matching {regex.pattern!r} on the console")


def split_stages(
    lines: Lines, *, t_edit: float, t_restart: float, t_vm_done: float, t_up: float
) -> dict[str, float]:
    """Seconds per stage (keys of :data:`STAGES`) of a reload whose console ``lines``
    (since the restart) reached the target at ``t_up``; LookupError if a line is missing."""
    steps: dict[str, float] = {}
    for _, text in lines:
        if match := STEP.search(text):
            steps[match.group(1)] = steps.get(match.group(1), 0.0) + float(match.group(2))
    t_ready = _first(lines, re.compile(r"python ready at"))[0] - steps.get("init", 0.0)
    t_parsed = _first(lines, re.compile(r"cloud-boot: \S+ step parse "))[0]
    t_chosen = _first(lines, CHOSEN)[0]
    try:
        t_reboot = _first(lines, REBOOTED)[0]
    except LookupError:
        t_reboot = _first(lines, STAGED)[0]
    menu = t_chosen - t_parsed
    agent = sum(steps.values())
    return {
        "watcher": t_restart - t_edit,
        "vm": t_vm_done - t_restart,
        "firmware": t_ready - t_vm_done,
        "agent": agent,
        "menu": menu,
        "agent_rest": (t_reboot - t_ready) - agent - menu,
        "target": t_up - t_reboot,
    }


def host_stages(
    *, t_edit: float, t_restart: float, t_vm_done: float, t_up: float
) -> dict[str, float]:
    """The host loop's split (keys of :data:`HOST_STAGES`): the staging is in ``vm``."""
    return {"watcher": t_restart - t_edit, "vm": t_vm_done - t_restart, "boot": t_up - t_vm_done}


Outcome = Literal["up", "fatal", "panic", "timeout"]


@dataclass(frozen=True)
class Verdict:
    """How the console says the reload ended (``at``: when that line appeared)."""

    outcome: Outcome
    at: float
    target: str | None = None
    fatal: str | None = None
    hint: str | None = None
    last_line: str | None = None  # timeout: where the console stopped
    quiet_s: float | None = None  # timeout: for how long


#: How long a FATAL line waits for its ``hint:`` line (the guest writes them back to back).
HINT_GRACE_S = 1.0


def verdict(lines: Lines, now: float | None = None, staged: str | None = None) -> Verdict | None:
    """The reload's end as far as ``lines`` show it; None while the guest is still going
    (or, ``now`` given, a FATAL line may still get its hint). ``staged``: the target the
    host staged (the host loop), so no agent line announces it."""
    chosen = None
    for i, (seen, text) in enumerate(lines):
        if match := CHOSEN.search(text):
            chosen = match.group(1)
        elif match := STAGED.search(text):
            staged = match.group(1)
        elif match := PANIC.search(text):
            return Verdict("panic", seen, staged, match.group(1), PANIC_HINTS[staged is not None])
        elif match := FATAL.search(text):
            if i + 1 == len(lines) and now is not None and now - seen < HINT_GRACE_S:
                return None
            after = lines[i + 1][1] if i + 1 < len(lines) else ""
            hint = HINT.search(after)
            return Verdict("fatal", seen, chosen, match.group(1), hint.group(1) if hint else None)
        elif staged is not None and (match := TARGET_UP.search(text)):
            return Verdict("up", seen, match.group(1) or staged)
    return None


@dataclass(frozen=True)
class QuietConsole:
    """A reload whose console has printed nothing for a while; the watch goes on."""

    quiet_s: float
    last_line: str | None  # None: nothing since the restart

    @classmethod
    def of(cls, lines: Lines, now: float, since: float) -> QuietConsole:
        """The last console line and how long it has stood (``since``: the VM's restart,
        when the console printed nothing at all)."""
        seen, text = lines[-1] if lines else (since, None)
        return cls(now - seen, text)

    def described(self) -> str:
        after = repr(self.last_line) if self.last_line is not None else "the VM restart"
        return f"the console has been quiet for {self.quiet_s:.0f} s after {after}"


def timed_out(lines: Lines, now: float, since: float) -> Verdict:
    """A reload that did not end, with where its console stopped."""
    quiet = QuietConsole.of(lines, now, since)
    return Verdict("timeout", now, last_line=quiet.last_line, quiet_s=quiet.quiet_s)


@dataclass(frozen=True)
class ReloadStart:
    """What the pipeline knows when it has restarted the VM for an edit."""

    mark: int  # console byte offset before the restart
    edited_at: float  # wall time of the batch's first file event
    restart_at: float
    restarted_at: float
    publish_s: float = 0.0
    build_s: float = 0.0
    host_target: str | None = None  # the host loop staged this one
    first: bool = False  # `up`'s first boot: timed from `up` itself, no edit behind it


@dataclass(frozen=True)
class ReloadResult:
    """One reload, as ``up``/``watch`` print it and ``status`` keeps it."""

    outcome: Outcome
    target: str | None
    since_edit_s: float
    at: float  # wall time the outcome appeared
    publish_s: float = 0.0
    build_s: float = 0.0
    stages: Mapping[str, float] = field(default_factory=dict)
    fatal: str | None = None
    hint: str | None = None
    last_line: str | None = None
    quiet_s: float | None = None
    first: bool = False  # `up`'s first boot: since_edit_s counts from `up` starting

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        for key in ("since_edit_s", "publish_s", "build_s", "quiet_s"):
            doc[key] = None if doc[key] is None else round(doc[key], 3)
        return doc


def result_for(start: ReloadStart, lines: Lines, end: Verdict) -> ReloadResult:
    """The result of a reload that ended with ``end``; stages when the console has them."""
    stages: dict[str, float] = {}
    if end.outcome == "up" and start.host_target is not None:
        stages = host_stages(t_edit=start.edited_at, t_restart=start.restart_at,
                             t_vm_done=start.restarted_at, t_up=end.at)  # fmt: skip
    elif end.outcome == "up":
        try:
            stages = split_stages(lines, t_edit=start.edited_at, t_restart=start.restart_at,
                                  t_vm_done=start.restarted_at, t_up=end.at)  # fmt: skip
        except LookupError:
            stages = {}  # a quiet agent (cloudboot.quiet): the total still holds
    return ReloadResult(end.outcome, end.target, end.at - start.edited_at, end.at,
                        start.publish_s, start.build_s, stages, end.fatal, end.hint,
                        end.last_line, end.quiet_s, start.first)  # fmt: skip


def _seconds(value: float) -> str:
    """A stage's seconds: tenths, or hundredths below 0.1 s, so a publish that took
    40 ms does not read "publish 0.0" as if nothing was published."""
    return f"{value:.2f}" if 0 < value < 0.1 else f"{value:.1f}"


def format_result(result: ReloadResult, number: int | None = None) -> str:
    """One compact line (two with a FATAL's hint)."""
    head = f"reload {number}: " if number is not None else "reload: "
    since = "`up` started" if result.first else "the edit"
    took = f"{result.since_edit_s:.1f} s after {since}"
    parts = []
    if result.publish_s:
        parts.append(f"publish {_seconds(result.publish_s)}")
    if result.build_s:
        parts.append(f"boot.iso {_seconds(result.build_s)}")
    short = {**SHORT, "watcher": "setup"} if result.first else SHORT  # key, registry, build
    parts += [f"{short[k]} {_seconds(v)}" for k, v in result.stages.items()]
    tail = f" [{', '.join(parts)} s]" if parts else ""
    if result.outcome == "up":
        return f"{head}target {result.target} up, {took}{tail}"
    if result.outcome in ("fatal", "panic"):
        what = "guest FATAL" if result.outcome == "fatal" else "kernel panic"
        line = f"{head}{what}, {took}: {result.fatal}"
        return line + (f"\n  hint: {result.hint}" if result.hint else "")
    stopped = ""
    if result.quiet_s is not None:
        stopped = "; " + QuietConsole(result.quiet_s, result.last_line).described()
    return f"{head}no target up {took}{stopped} (see `cloudboot vm console`){tail}"


def format_quiet(notice: QuietConsole) -> str:
    return (
        f"reload: {notice.described()}; still waiting (a guest that waits for input is"
        " quiet too; the next edit or `cloudboot vm restart --reset-nvram` starts over)"
    )


class ReloadWatch:
    """Follows the serial console; after each ``begin`` reports one :class:`ReloadResult`.

    A newer ``begin`` (the next edit restarted the VM) supersedes the pending one, which
    reports nothing. ``on_console`` sees every console line (``--console``);
    ``on_quiet`` hears once per reload when the console has printed nothing for
    ``quiet_s`` (a stalled boot says so long before ``timeout_s``).
    """

    def __init__(
        self,
        serial_log: Path,
        report: Callable[[ReloadResult], None],
        *,
        on_console: Callable[[str], None] | None = None,
        on_quiet: Callable[[QuietConsole], None] | None = None,
        timeout_s: float = 600.0,
        quiet_s: float = 60.0,
    ) -> None:
        self.clock = LineClock(serial_log, on_line=on_console, poll_s=0.05, from_end=True)
        self.report = report
        self.on_quiet = on_quiet
        self.timeout_s = timeout_s
        self.quiet_s = quiet_s
        self._generation = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __enter__(self) -> ReloadWatch:
        self.clock.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self.clock.__exit__(exc_type, exc, tb)

    def mark(self) -> int:
        return self.clock.size()

    def begin(self, start: ReloadStart) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        self.clock.forget(start.mark)
        threading.Thread(
            target=self._follow, args=(start, generation), name="reload-watch", daemon=True
        ).start()

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation and not self._stop.is_set()

    def _follow(self, start: ReloadStart, generation: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        quiet_said = False
        while self._current(generation):
            lines, now = self.clock.lines(start.mark), time.time()
            end = verdict(lines, now, start.host_target)
            if end is None and time.monotonic() >= deadline:
                end = timed_out(lines, now, start.restarted_at)
            if end is not None:
                self.report(result_for(start, lines, end))
                return
            quiet = QuietConsole.of(lines, now, start.restarted_at)
            if not quiet_said and self.on_quiet is not None and quiet.quiet_s >= self.quiet_s:
                quiet_said = True
                self.on_quiet(quiet)
            self._stop.wait(0.1)
