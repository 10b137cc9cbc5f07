"""Dataclass methods compiled once at pack time instead of on every guest boot.

``@dataclass`` writes ``__init__``/``__repr__``/``__eq__``/... as source text and
``exec``s it when the class is created; compiling that text is most of a dataclass's
cost. The agent and the plan code define ~70 of them, which cost ~20 ms natively and
~0.3 s under TCG on every boot, before the agent does anything. The packer records the
code objects for every such text (``record``) with the same Python minor version, and
the guest's entry script installs them (``install``) before importing the agent.

The cache is keyed by the exact source text, so a text it does not hold (another
Python patch release generating different code, a class added later) is compiled as
usual: a miss costs what the cache saves, it never changes behaviour.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import marshal
from collections.abc import Iterable
from types import CodeType
from typing import Any

#: Where the packer puts the cache in the guest, next to the agent.
CACHE_NAME = "dataclass-code.marshal"


class _CachedExec:
    """Stands in for ``exec`` inside the ``dataclasses`` module only."""

    def __init__(self, codes: dict[str, CodeType]) -> None:
        self.codes = codes
        self.hits = 0
        self.misses = 0

    def __call__(self, source: Any, globals_: Any = None, locals_: Any = None) -> None:
        code = self.codes.get(source) if isinstance(source, str) else None
        if code is None:
            self.misses += 1
            builtins.exec(source, globals_, locals_)
        else:
            self.hits += 1
            builtins.exec(code, globals_, locals_)


class _Recorder:
    def __init__(self) -> None:
        self.codes: dict[str, CodeType] = {}

    def __call__(self, source: Any, globals_: Any = None, locals_: Any = None) -> None:
        if isinstance(source, str):
            code = compile(source, "<string>", "exec")
            self.codes[source] = code
            builtins.exec(code, globals_, locals_)
        else:
            builtins.exec(source, globals_, locals_)


def install(path: str) -> _CachedExec | None:
    """Serve dataclass method code from ``path``; a missing or bad file changes nothing."""
    try:
        with open(path, "rb") as f:
            codes = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(codes, dict):
        return None
    cached = _CachedExec(codes)
    dataclasses.exec = cached  # type: ignore[attr-defined]  # module global shadows builtin
    return cached


def record(modules: Iterable[str]) -> bytes:
    """Import ``modules`` (fresh: call in a new interpreter) and return the marshalled cache."""
    recorder = _Recorder()
    dataclasses.exec = recorder  # type: ignore[attr-defined]
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
    return marshal.dumps(recorder.codes)
