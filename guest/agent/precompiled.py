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

The entry script also defers (``defer``) two stdlib modules the agent's imports name but
its boot path does not use, measured with ``PYTHONPROFILEIMPORTTIME`` in a TCG guest:
``dataclasses`` imports ``inspect`` (which brings ast, dis and tokenize: ~0.2 s) only to
write a docstring for a dataclass that has none, and ``subprocess`` imports ``locale``
(~40 ms) for text-mode pipes, which the agent does not open. Every dataclass in guest/
has a docstring (tests/test_guest_pack.py checks both), so neither is loaded on boot.
This module imports ``dataclasses`` only inside its functions, after ``defer``.
"""

from __future__ import annotations

import builtins
import importlib
import marshal
import sys
from collections.abc import Iterable
from types import CodeType, FunctionType, ModuleType
from typing import Any

#: Where the packer puts the cache in the guest, next to the agent.
CACHE_NAME = "dataclass-code.marshal"
#: Imported by modules the agent imports, used on none of its boot paths (see above).
DEFERRED = ("inspect", "locale")
#: Modules the stdlib tries and fails to import on Linux (Windows' ``nt``, ``msvcrt``,
#: ``_winapi``; Jython's ``org`` in ``copy``), and ``_uuid``, which ``uuid`` loads (a
#: shared library and libuuid) only for uuid1(), which the agent never calls: each is a
#: path search or a dlopen, ~15 ms together under TCG. ``None`` in ``sys.modules`` makes
#: the import fail at once, as it would after the search.
ABSENT = ("nt", "msvcrt", "_winapi", "org", "_uuid")


class _Deferred(ModuleType):
    """Stands in for a module until something uses one of its names; then the real one
    is imported (and replaces this one in ``sys.modules``) and answers."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def defer(names: Iterable[str] = DEFERRED, absent: Iterable[str] = ABSENT) -> None:
    """Put a stand-in for each module not imported yet (call before anything imports
    it), and mark the ``absent`` ones as not importable."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)
    for name in absent:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


#: The function ``dataclasses`` defines in each text it execs; it returns the method.
_CREATE_FN = "__create_fn__"


def _create_fn_code(module: CodeType) -> CodeType | None:
    """The code of the text's ``__create_fn__`` when the text defines just that (it does in
    Python 3.11): the cache keeps only it, a sixth smaller and quicker to unmarshal than
    the whole module's code, and the guest makes the function without running a module."""
    inner = [c for c in module.co_consts if isinstance(c, CodeType)]
    if module.co_names == (_CREATE_FN,) and len(inner) == 1 and inner[0].co_name == _CREATE_FN:
        return inner[0]
    return None


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
        elif code.co_name == _CREATE_FN:  # what the text's one ``def`` statement makes
            self.hits += 1
            locals_[_CREATE_FN] = FunctionType(code, globals_)
        else:
            self.hits += 1
            builtins.exec(code, globals_, locals_)


class _Recorder:
    def __init__(self) -> None:
        self.codes: dict[str, CodeType] = {}

    def __call__(self, source: Any, globals_: Any = None, locals_: Any = None) -> None:
        if isinstance(source, str):
            code = compile(source, "<string>", "exec")
            self.codes[source] = _create_fn_code(code) or code
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
    import dataclasses  # after defer(): see the module's docstring

    cached = _CachedExec(codes)
    dataclasses.exec = cached  # type: ignore[attr-defined]  # module global shadows builtin
    return cached


def record(modules: Iterable[str]) -> bytes:
    """Import ``modules`` (fresh: call in a new interpreter) and return the marshalled cache."""
    import dataclasses

    recorder = _Recorder()
    dataclasses.exec = recorder  # type: ignore[attr-defined]
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
    return marshal.dumps(recorder.codes)
