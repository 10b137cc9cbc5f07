"""Coalesce bursts of file events into batches.

A batch closes once no event has arrived for the debounce window, so a ``git checkout``
touching thousands of files, or an editor's write-rename-chmod dance, is one batch. Events
that arrive while the consumer is busy with the previous batch simply collect here: when
the consumer comes back they form exactly one follow-up batch, and nothing is lost.

Inside the window the consumer may also be told, once the events have *settled* (a much
shorter quiet time), which paths are pending so far, so slow work can start early and
only its last step waits for the window to close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Quiet time after which pending paths are offered to ``on_settle`` (an editor's
#: truncate-write-close sequence takes well under a millisecond).
SETTLE_SECONDS = 0.01


@dataclass(frozen=True)
class Batch:
    """The union of the paths changed during one window."""

    paths: frozenset[Path]
    events: int
    first_at: float | None = None  # wall time of the window's first event (the edit)


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
        self._first_at: float | None = None
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
                self._cond.notify_all()
                self._first_at = time.time()
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

    def next_batch(
        self,
        timeout: float | None = None,
        *,
        on_settle: Callable[[frozenset[Path]], None] | None = None,
    ) -> Batch | None:
        """Block until a batch is quiet for the window; None when closed or on timeout.

        ``on_settle`` (called on this thread, without the lock held) gets the pending paths
        whenever events have been quiet for ``SETTLE_SECONDS`` but the window is still
        open; again after every later event. Windows too short to gain from it skip it.
        """
        deadline = None if timeout is None else self._clock() + timeout
        offered = -1  # the total event count when pending paths were last offered
        offer = on_settle if self._window > 2 * SETTLE_SECONDS else None
        with self._cond:
            while not self._closed:
                now = self._clock()
                if self._pending:
                    quiet_at = self._last + self._window
                    if now >= quiet_at:
                        return self._take()
                    wait = quiet_at - now
                    if offer is not None and self.total_events != offered:
                        settled_at = self._last + SETTLE_SECONDS
                        if now >= settled_at:
                            offered = self.total_events
                            paths = frozenset(self._pending)
                            with self._unlocked():
                                offer(paths)
                            continue
                        wait = min(wait, settled_at - now)
                else:
                    wait = None
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = min(wait, deadline - now) if wait is not None else deadline - now
                self._cond.wait(wait)
            return None

    @contextmanager
    def _unlocked(self) -> Iterator[None]:
        self._cond.release()
        try:
            yield
        finally:
            self._cond.acquire()

    def _take(self) -> Batch:
        batch = Batch(frozenset(self._pending), self._events, self._first_at)
        self._pending = set()
        self._events = 0
        return batch
