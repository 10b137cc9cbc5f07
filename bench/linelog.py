"""When each line of a growing log file appeared: the clock for serial-console benches.

A serial log carries no host timestamps, and polling for one pattern at a time only dates
the line being waited for. A background thread that reads the file every few
milliseconds and stamps every complete line with the wall time it first saw it dates all
of them, so stages between any two lines can be measured after the fact.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


class LineClock:
    """Tails ``path`` and records ``(seen_at, byte_offset, line)``.

    vfkit truncates its serial log at every launch: offsets then keep counting from where
    the old file ended (a truncation is seen as the file shrinking below what was read,
    which is safe because a VM writes nothing for a while after it starts), so marks
    taken before a restart still mean "after this point".
    """

    def __init__(self, path: Path, *, poll_s: float = 0.01) -> None:
        self.path = path
        self.poll_s = poll_s
        self._lines: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self._base = 0  # bytes of earlier (truncated) incarnations of the file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="line-clock", daemon=True)

    def _follow(self) -> None:
        offset, pending = 0, b""
        while not self._stop.is_set():
            try:
                with self.path.open("rb") as f:
                    if f.seek(0, 2) < offset:  # truncated: a new launch's log
                        with self._lock:
                            self._base += offset
                        offset, pending = 0, b""
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.time()
            if chunk:
                data = pending + chunk
                start = self._base + offset - len(pending)
                *complete, pending = data.split(b"\n")
                with self._lock:
                    for raw in complete:
                        self._lines.append((now, start, raw.decode(errors="replace")))
                        start += len(raw) + 1
                offset += len(chunk)
            self._stop.wait(self.poll_s)

    def __enter__(self) -> LineClock:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def size(self) -> int:
        """The file's current length (after earlier incarnations): a mark that later
        searches start from."""
        with self._lock:
            base = self._base
        return base + (self.path.stat().st_size if self.path.exists() else 0)

    def all(
        self, pattern: str | re.Pattern[str], *, since: int = 0
    ) -> list[tuple[float, re.Match[str]]]:
        regex = re.compile(pattern)
        with self._lock:
            lines = list(self._lines)
        return [
            (seen, m) for seen, off, text in lines if off >= since and (m := regex.search(text))
        ]

    def first(
        self, pattern: str | re.Pattern[str], *, since: int = 0
    ) -> tuple[float, re.Match[str]]:
        """The first matching line at or after byte ``since``; it must be there already."""
        found = self.all(pattern, since=since)
        if not found:
            raise SystemExit(f"no line matching {str(pattern)!r} in {self.path} after byte {since}")
        return found[0]

    def wait(
        self,
        pattern: str,
        *,
        since: int = 0,
        timeout: float = 300.0,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[float, re.Match[str]]:
        """Wait for a matching line; returns when it was first seen, not when we looked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.all(pattern, since=since)
            if found:
                return found[0]
            if alive is not None and not alive():
                raise SystemExit(f"the process died while waiting for {pattern!r} in {self.path}")
            time.sleep(0.05)
        tail = "\n".join(text for _, _, text in self._lines[-30:])
        raise SystemExit(f"no {pattern!r} in {self.path} within {timeout:.0f} s; tail:\n{tail}")
