"""Coalesce bursts of file events into batches.

A batch closes once no event has arrived for the debounce window, so a ``git checkout``
touching thousands of files, or an editor's write-rename-chmod dance, is one batch. Events
that arrive while the consumer is busy with the previous batch simply collect here: when
the consumer comes back they form exactly one follow-up batch, and nothing is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Batch:
    """The union of the paths changed during one window."""

    paths: frozenset[Path]
    events: int
    first_event: float  # clock() time of the first event in the batch
    last_event: float = field(default=0.0)


class ChangeQueue:
    """A thread-safe set of pending paths with a quiet-time trigger.

    ``add`` is called from the observer's thread for every event and must stay cheap: it
    only wakes the consumer when the queue goes from empty to non-empty; the consumer then
    sleeps until the window after the latest event has passed.
    """

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: set[Path] = set()
        self._events = 0
        self._first = 0.0
        self._last = 0.0
        self._closed = False
        self.total_events = 0

    @property
    def window(self) -> float:
        return self._window

    def set_window(self, window: float) -> None:
        with self._cond:
            self._window = window
            self._cond.notify_all()

    def add(self, path: Path) -> None:
        now = self._clock()
        with self._cond:
            if not self._pending:
                self._first = now
                self._cond.notify_all()
            self._pending.add(path)
            self._events += 1
            self.total_events += 1
            self._last = now

    def close(self) -> None:
        """Make ``next_batch`` return None (pending paths are dropped: we are stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def next_batch(self, timeout: float | None = None) -> Batch | None:
        """Block until a batch is quiet for the window; None when closed or on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                if self._pending:
                    quiet_at = self._last + self._window
                    if now >= quiet_at:
                        return self._take()
                    wait = quiet_at - now
                else:
                    wait = None
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = min(wait, deadline - now) if wait is not None else deadline - now
                self._cond.wait(wait)
            return None

    def _take(self) -> Batch:
        batch = Batch(frozenset(self._pending), self._events, self._first, self._last)
        self._pending = set()
        self._events = 0
        return batch
