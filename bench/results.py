"""The rows every bench script hands to bench/report.py, and the two options that ask for them.

Each script stays runnable on its own and keeps printing its human table; with
``--json PATH`` it also writes its numbers as a list of :class:`Row` (atomically, so the
report never reads half a file), and ``--quick`` asks for fewer runs. A row carries its
own baseline and target so the report can put every number next to what it is measured
against without knowing anything about the bench that produced it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guest.contract.fsutil import write_atomic


@dataclass(frozen=True)
class Row:
    """One measured number, optionally against a baseline (or floor) and a target.

    ``ratio`` is ``value / baseline_value`` unless the bench passes its own (say when the
    meaningful comparison is a throughput, where bigger is better). ``passed`` is None
    when the row has no target.
    """

    issue: int
    metric: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    passed: bool | None = None
    note: str = field(default="")

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline_value:
            object.__setattr__(self, "ratio", self.value / self.baseline_value)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**data)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """``--quick`` and ``--json PATH``, and make SIGTERM unwind like Ctrl-C.

    The report stops a bench that overruns its time with SIGTERM; turning that into
    SystemExit lets the bench's context managers stop the registry and QEMU it started
    instead of leaving them running.
    """
    parser.add_argument("--quick", action="store_true", help="fewer runs (for bench/report.py)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def write_text_atomic(path: Path, text: str) -> None:
    """Readers (and a report interrupted half-way) never see half a file."""
    write_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def emit(rows: list[Row], path: Path | None) -> None:
    """Write ``rows`` to ``path`` when the report asked for them (``--json``)."""
    if path is not None:
        write_json_atomic(path, [row.to_json() for row in rows])


def load_rows(path: Path) -> list[Row]:
    return [Row.from_json(item) for item in json.loads(path.read_text())]
