"""What `cloudboot up` and `watch` print about each reload, and `--console`'s stream.

Results go to stdout (logs stay on stderr): plain text whether or not stdout is a
terminal, one JSON document per line with ``--log-format json``. The status file keeps
every result whatever is printed, so `cloudboot status` shows the last reloads of a
watcher running as a service too.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # loaded by a command that runs the loop, not by every CLI start
    from watcher.watch.reload import QuietConsole, ReloadResult, ReloadWatch
    from watcher.watch.status import StatusBook

ConsoleOption = Annotated[
    bool,
    typer.Option("--console/--no-console", help="Stream the guest's serial console inline."),
]


@dataclass
class LoopView:
    """How results and console lines are shown (``json``: one JSON document per line)."""

    json: bool = False
    console: bool = False
    results: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_command(cls, log_format: str, *, console: bool, always: bool) -> LoopView:
        """``always``: `up` prints results anywhere; `watch` only on a terminal (or JSON)."""
        as_json = log_format == "json"
        return cls(as_json, console, always or as_json or sys.stdout.isatty())

    def _out(self, text: str) -> None:
        with self._lock:
            typer.echo(text)

    def show(self, result: ReloadResult, number: int) -> None:
        if not self.results:
            return
        from watcher.watch.reload import format_result

        if self.json:
            self._out(json.dumps({"event": "reload", "number": number, **result.to_json()}))
        else:
            self._out(format_result(result, number))

    def quiet(self, notice: QuietConsole) -> None:
        """A reload's console went quiet (said once; the result comes later)."""
        if not self.results:
            return
        from watcher.watch.reload import format_quiet

        if self.json:
            doc = {"event": "reload-quiet", "quiet_s": round(notice.quiet_s, 3),
                   "last_line": notice.last_line}  # fmt: skip
            self._out(json.dumps(doc))
        else:
            self._out(format_quiet(notice))

    def console_line(self, line: str) -> None:
        if self.json:
            self._out(json.dumps({"event": "console", "line": line}))
        else:
            self._out(f"console| {line}")


@contextlib.contextmanager
def loop_watch(status: StatusBook, serial_log: Path, view: LoopView) -> Iterator[ReloadWatch]:
    """Follow the console: each result goes into the status file, then to the view."""
    from watcher.watch.reload import ReloadWatch

    def report(result: ReloadResult) -> None:
        view.show(result, status.record_reload(result))

    on_console = view.console_line if view.console else None
    with ReloadWatch(serial_log, report, on_console=on_console, on_quiet=view.quiet) as watch:
        yield watch
