"""structlog configuration for the host CLI: readable on a terminal, JSON lines otherwise.

Logs go to stderr so stdout stays clean for results (`REF@sha256:...`, `--json`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Literal

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


def configure_logging(verbose: int = 0, fmt: LogFormat = "auto") -> None:
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
