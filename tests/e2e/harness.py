"""Drive the live-reload loop the way a user does: `cloudboot up` in a workspace, edits, the
serial console.

Used by the end-to-end test and by bench/edit_to_target.py, so both measure the same loop
a new user gets from the README's first command. Everything is real: `cloudboot init`,
the embedded registry (on a free loopback port; the baked cmdline names it as the guest's
gateway, oci://{{.Gateway}}:PORT), the guest agent UKI, QEMU with OVMF under TCG.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from publisher.localregistry import free_port, port_in_use

CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")
TARGET_UP = "CLOUDBOOT-TARGET-UP"


class LoopError(AssertionError):
    """The loop did not do what a user would expect; carries the tail of the evidence."""


@dataclass
class SerialLog:
    """The VM's serial log, read incrementally by byte offset."""

    path: Path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, since: int = 0) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def wait_for(
        self, pattern: str, *, since: int = 0, timeout: float = 240.0, alive: Any = None
    ) -> tuple[re.Match[str], float]:
        """Wait for a complete line matching ``pattern``; returns the match and wall time seen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text(since)
            for line in text.splitlines(keepends=True):
                if line.endswith("\n") and (match := regex.search(line)):
                    return match, time.time()
            if alive is not None and not alive():
                raise LoopError(f"cloudboot up exited while waiting for {pattern!r}")
            time.sleep(0.1)
        raise LoopError(f"no {pattern!r} on the serial log within {timeout:.0f}s; tail:\n"
                        + self.text(since)[-3000:])  # fmt: skip


class LiveLoop:
    """`cloudboot up` running in a fresh workspace under ``root``; stopped with SIGINT on exit.

    ``cpus`` is 1 unless a caller asks for more: the suite runs TCG guests two at a time on
    a 2-core machine, where a second vCPU buys no speed (the same kernel reaches its root
    mount in ~3.3 s either way) and once cost a whole test: in CI of 7202437 a 2-vCPU
    guest stalled for good in late init, its idle second vCPU never getting its timer
    interrupt (``rcu_preempt kthread timer wakeup didn't happen ... cpu=1``). 92 loaded
    2-vCPU boots here did not reproduce it, so this removes the exposure, not a known
    cause. The bench keeps the default workspace's 2 so its numbers stay comparable.
    """

    def __init__(
        self, root: Path, *, arch: str = "x86_64", password: str = "e2e-password",
        loop: str = "guest", cpus: int = 1,
    ) -> None:  # fmt: skip
        self.root = root
        self.arch = arch
        self.cpus = cpus
        self.loop = loop  # [watch].loop
        self.port = free_port()
        self.env = {**os.environ, "COSIGN_PASSWORD": password}
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial = SerialLog(root / ".cloudboot" / "vm" / "serial.log")
        self.log_path = root / "up.log"
        self.exit_code: int | None = None

    # -- the workspace ---------------------------------------------------------------------
    @property
    def plan(self) -> Path:
        return self.root / "plans" / "default.hcl"

    @property
    def recipe(self) -> Path:
        return self.root / "kernel" / "recipe.toml"

    @property
    def iso(self) -> Path:
        return self.root / "build" / "boot.iso"

    def create_workspace(self) -> None:
        subprocess.run([CLOUDBOOT, "init", str(self.root)], check=True, capture_output=True)
        config = self.root / "cloudboot.toml"
        text = config.read_text()
        text = text.replace("[registry]\n", f'[registry]\nurl = "127.0.0.1:{self.port}"\n', 1)
        text = text.replace("[vm]\n", f'[vm]\narch = "{self.arch}"\ncpus = {self.cpus}\n', 1)
        text = text.replace("[watch]\n", f'[watch]\nloop = "{self.loop}"\n', 1)
        config.write_text(text)
        # The baked plan ref follows [registry].url (as oci://{{.Gateway}}:PORT/...).

    def edit(self, path: Path, old: str, new: str) -> float:
        """Edit a file in place as an editor would; returns the wall time of the write."""
        text = path.read_text()
        if old not in text:
            raise LoopError(f"{old!r} not in {path}")
        stamp = time.time()
        path.write_text(text.replace(old, new, 1))
        return stamp

    # -- the process -----------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [CLOUDBOOT, "--log-format", "json", "-C", str(self.root), "up"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines `cloudboot up` has written so far."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events

    def wait_event(
        self, predicate: Any, *, after: int = 0, timeout: float = 120.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.log_events()[after:]:
                if predicate(event):
                    return event
            if not self.alive():
                raise LoopError("cloudboot up exited:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.1)
        raise LoopError("expected log event not seen:\n" + self.log_path.read_text()[-3000:])

    def vm_pid(self) -> int:
        """The VM process's pid (QEMU's pidfile, or vfkit's)."""
        state = self.root / ".cloudboot" / "vm"
        pidfile = next(p for p in (state / "qemu.pid", state / "vfkit.pid") if p.exists())
        return int(pidfile.read_text().strip())

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def evidence(self) -> str:
        """More to show when the loop fails (hook: the Mac-shaped loop's firmware log)."""
        return ""

    def registry_up(self) -> bool:
        return port_in_use("127.0.0.1", self.port)

    def __enter__(self) -> LiveLoop:
        self.create_workspace()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is not None and (shown := self.evidence()):
            print(shown)  # pytest shows it with the failure
