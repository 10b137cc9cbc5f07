"""A progress bar for long publishes: a redrawn bar on a terminal, a few plain lines elsewhere.

A thousand plans take long enough that a silent terminal looks hung; a CI log, though,
must not fill with carriage returns, so off a terminal it prints a line per tenth done.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

WIDTH = 30


class Progress:
    """Counts ``advance`` calls towards ``total``, drawn on ``stream`` (stderr by default)."""

    def __init__(
        self, what: str, total: int, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.count = 0
        self._shown = -1
        self._lock = threading.Lock()

    def line(self) -> str:
        if not self.tty:
            return f"{self.what}: {self.count}/{self.total}"
        filled = WIDTH * self.count // max(self.total, 1)
        return f"\r{self.what} [{'#' * filled}{' ' * (WIDTH - filled)}] {self.count}/{self.total}"

    def advance(self, step: int = 1) -> None:
        with self._lock:
            self.count += step
            if self.tty:
                shown = WIDTH * self.count // max(self.total, 1)
            else:
                shown = 10 * self.count // max(self.total, 1)
            if shown != self._shown or self.count == self.total:
                self._shown = shown
                self.stream.write(self.line() if self.tty else self.line() + "\n")
                self.stream.flush()

    def done(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()


class NoProgress(Progress):
    """For small runs and callers that report on their own."""

    def __init__(self) -> None:
        super().__init__("", 0)

    def advance(self, step: int = 1) -> None:
        self.count += step

    def done(self) -> None:
        pass
