"""What outlives one CLI call: the VM record (vm.json), the pidfile, and process checks.

``vm up`` runs in one process and ``vm status``/``vm down`` in later ones, so everything
about a running VM is on disk in state_dir. A pidfile can go stale and its pid be reused
by an unrelated process, so before we ever signal a pid we check that its command line
is our QEMU/vfkit for this very state_dir.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from guest.contract.fsutil import write_atomic
from publisher.run import CommandError, ToolMissingError, run


@dataclass(frozen=True)
class VmRecord:
    """The last launch: who, when, and what the user wants (``desired`` running/stopped).

    ``desired`` tells the supervisor a stop it did not ask for (guest reboot on vfkit, a
    crash) from one the user asked for with ``vm down`` in another process.
    """

    backend: str
    pid: int
    started_at: float
    desired: str
    serial_offset: int = 0
    nvram_reset_at_launch: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def load_record(path: Path) -> VmRecord | None:
    try:
        data = json.loads(path.read_text())
        return VmRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_record(path: Path, record: VmRecord) -> None:
    """Write vm.json atomically, so a concurrent reader never sees half a record."""
    write_atomic(path, json.dumps(record.to_json(), indent=2).encode() + b"\n")


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


#: /proc/<pid>/stat states of a process that has ended (its files are closed).
GONE = ("Z", "X")


def _linux_state(pid: int) -> str:
    """The one-letter state in /proc/<pid>/stat (after the command name, which may hold
    spaces and parentheses itself)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None when it is gone (zombies count as gone)."""
    if sys.platform.startswith("linux"):
        try:
            if _linux_state(pid) in GONE:
                return None
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None
    try:  # macOS and other BSDs: ps (state first, so zombies are recognised)
        out = run(["ps", "-p", str(pid), "-o", "state=,command="]).stdout.decode()
    except (CommandError, ToolMissingError):
        return None
    line = out.strip()
    if not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def exiting(pid: int) -> bool:
    """Whether ``pid`` is past its end but not yet a zombie (Linux): its memory is gone, so
    it has no argv and reads as stopped, but its files, and with them QEMU's lock on a
    disk image, stay open until the kernel has torn down the rest. A VM relaunched in that
    window fails with "Failed to get "write" lock"."""
    try:
        return _linux_state(pid) not in GONE and not Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def is_our_process(cmdline: list[str] | None, names: tuple[str, ...], marker: Path) -> bool:
    """The process runs one of ``names`` (QEMU, vfkit) and mentions our ``marker`` path.

    The marker is the control socket, unique per state_dir, so a reused pid that runs
    another VM (or anything else) is never signalled.
    """
    if not cmdline:
        return False
    programs = {os.path.basename(cmdline[0])}
    if len(cmdline) > 1:  # a script run by its interpreter: python3 /path/to/vfkit
        programs.add(os.path.basename(cmdline[1]))
    if not programs & set(names):
        return False
    return str(marker) in " ".join(cmdline)  # ps output splits paths with spaces


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process (zombies count as gone)? The one liveness check."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive, unless it is a zombie
    return process_cmdline(pid) is not None


def serial_tail(log: Path, offset: int, max_lines: int = 20) -> list[str]:
    """The last lines the guest wrote since the launch at ``offset`` (ANSI noise kept out)."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0
            f.seek(max(start, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    text = data.decode(errors="replace").replace("\r", "")
    lines = [_strip_ansi(line) for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    return lines[-max_lines:]


def _strip_ansi(line: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == "\x1b" and i + 1 < len(line) and line[i + 1] == "[":
            j = i + 2
            while j < len(line) and not line[j].isalpha():
                j += 1
            i = j + 1
            continue
        if line[i] == "\x08" and out:
            out.pop()
        elif line[i].isprintable() or line[i] == "\t":
            out.append(line[i])
        i += 1
    return "".join(out)
