"""When each line of a growing log file appeared: the clock for the VM's serial console.

The watcher's reload report (``watcher.watch.reload``) and the benches read it the same
way, so the numbers `cloudboot up` prints are the numbers bench/edit_to_target.py reports.

A serial log carries no host timestamps, and polling for one pattern at a time only dates
the line being waited for. A background thread that reads the file every few
milliseconds and stamps every complete line with the wall time it first saw it dates all
of them, so stages between any two lines can be measured after the fact.
"""

from __future__ import annotations

import contextlib
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

    def __init__(
        self,
        path: Path,
        *,
        poll_s: float = 0.01,
        on_line: Callable[[str], None] | None = None,
        from_end: bool = False,
        start: int = 0,
    ) -> None:
        """``on_line`` sees every new complete line (``--console``), on the clock's thread;
        ``from_end`` skips what the file already holds (an earlier session's boots),
        ``start`` the bytes before it (a launch's first byte, known before it began)."""
        self.path = path
        self.poll_s = poll_s
        self.on_line = on_line
        self._from_end = from_end
        self._start = start
        self._lines: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self._base = 0  # bytes of earlier (truncated) incarnations of the file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="line-clock", daemon=True)

    def _follow(self) -> None:
        offset, pending = self._start, b""
        if self._from_end:
            with contextlib.suppress(FileNotFoundError):
                offset = self.path.stat().st_size
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
                new = []
                for raw in complete:
                    new.append((now, start, raw.decode(errors="replace").rstrip("\r")))
                    start += len(raw) + 1
                with self._lock:
                    self._lines.extend(new)
                offset += len(chunk)
                if self.on_line is not None:
                    for _, _, text in new:
                        self.on_line(text)
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

    def lines(self, since: int = 0) -> list[tuple[float, str]]:
        """Every complete line at or after byte ``since``, with the time it was first seen."""
        with self._lock:
            return [(seen, text) for seen, off, text in self._lines if off >= since]

    def forget(self, before: int) -> None:
        """Drop lines before byte ``before`` (a long-running watcher keeps only the
        current reload's)."""
        with self._lock:
            self._lines = [line for line in self._lines if line[1] >= before]

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
            raise LookupError(
                f"no line matching {str(pattern)!r} in {self.path} after byte {since}"
            )
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
                raise LookupError(f"the process died while waiting for {pattern!r} in {self.path}")
            time.sleep(0.05)
        tail = "\n".join(text for _, _, text in self._lines[-30:])
        raise TimeoutError(f"no {pattern!r} in {self.path} within {timeout:.0f} s; tail:\n{tail}")
