"""structlog configuration for the host CLI: readable on a terminal, JSON lines otherwise.

Logs go to stderr so stdout stays clean for results (`REF@sha256:...`, `--json`).

Importing structlog costs about as much as the rest of the CLI's start-up together (it
loads rich and pygments for its console renderer), and commands such as `plan validate`
never log. So :func:`configure_logging` applies the configuration at once only when
structlog is already loaded; otherwise it waits for the first ``import structlog`` (a
one-shot import hook), which every module that logs does before its first log call.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import structlog

LogFormat = Literal["auto", "console", "json"]

#: Keys whose values must never be rendered, whatever a caller passes by mistake.
SECRET_KEYS = frozenset({"password", "passphrase", "token", "secret", "authorization", "auth"})


def _redact(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = "<redacted>"
    return event


def use_color(env: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    env = os.environ if env is None else env
    return sys.stderr.isatty() and not env.get("NO_COLOR")


def forget_pending() -> None:
    """Drop a configuration still waiting for structlog's import (a later call wins)."""
    for finder in [f for f in sys.meta_path if isinstance(f, _ConfigureOnImport)]:
        sys.meta_path.remove(finder)


def configure_logging(verbose: int = 0, fmt: LogFormat = "auto") -> None:
    """Configure structlog now if it is loaded, else right after it is first imported."""
    forget_pending()
    if "structlog" in sys.modules:
        _configure(verbose, fmt)
    else:
        sys.meta_path.insert(0, _ConfigureOnImport(lambda: _configure(verbose, fmt)))


class _ConfigureOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps structlog's own loader to run ``then`` once it is loaded."""

    def __init__(self, then: Callable[[], None]) -> None:
        self.then = then

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader  # as if no hook had been there
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.then()


def _configure(verbose: int, fmt: LogFormat) -> None:
    import logging

    import structlog

    level = {0: logging.INFO, 1: logging.DEBUG}.get(verbose, logging.DEBUG)
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=use_color())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes each line to ``sys.stderr`` as it is when the line is written.

    structlog's ``PrintLoggerFactory(file=sys.stderr)`` keeps the stream it was configured
    with; when that was a swapped-in stream (click's test runner, pytest's capture, or the
    one-shot import hook above firing inside someone else's redirection) which is closed
    later, every later log call in any thread raised ``ValueError: I/O operation on closed
    file`` and killed the publish or watcher thread that logged.
    """

    _lock = threading.Lock()

    def __init__(self, *_args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg
