"""Console output in upstream's style: ``cloud-boot: HH:MM:SS.micro message``, ``FATAL: ...``.

The agent writes to every console the user might be looking at (the serial port and the
virtual terminals), and times each step so the log itself is the benchmark: the bench
script reads the ``step`` lines back out of a serial log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TextIO


class Console:
    def __init__(self, streams: list[TextIO], *, quiet: bool = False) -> None:
        self.streams = streams
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()

    def _emit(self, line: str) -> None:
        for stream in self.streams:
            try:
                stream.write(line + "\n")
                stream.flush()
            except OSError:
                pass  # a console that went away must not take the boot with it

    def log(self, message: str) -> None:
        if self.quiet:
            return
        self._emit(f"cloud-boot: {_clock()} {message}")

    def warn(self, message: str) -> None:
        self._emit(f"cloud-boot: {_clock()} WARNING: {message}")

    def fatal(self, message: str, hint: str = "") -> None:
        self._emit(f"FATAL: {message}")
        if hint:
            self._emit(f"hint: {hint}")

    def write(self, text: str) -> None:
        """Raw text (the menu), no prefix."""
        for stream in self.streams:
            try:
                stream.write(text)
                stream.flush()
            except OSError:
                pass

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step; its line reads ``step <name> <seconds>s`` (the bench parses it)."""
        start = time.monotonic()
        yield
        took = time.monotonic() - start
        self.timings[name] = self.timings.get(name, 0.0) + took
        self.log(f"step {name} {took:.3f}s")


def _clock() -> str:
    """``HH:MM:SS.micro`` local time, as Go's log.Lmicroseconds prints it (no ``datetime``:
    its import is a measurable part of the guest's start-up under TCG)."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
