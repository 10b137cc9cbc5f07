"""Plan bytes to plan text: the one loader, so a bad byte gets one error everywhere.

The host CLI (`cloudboot plan validate`), the publisher, the watcher and the guest agent
all turn plan bytes into text here. Bytes that are not UTF-8 are a :class:`PlanError`
at the offending byte (``file:line:col``, the column counted in bytes), and a file that
cannot be read is a ``PlanError`` naming it, never a bare ``UnicodeDecodeError`` or
``OSError``.
"""

from __future__ import annotations

from pathlib import Path

from guest.contract.errors import Location
from guest.contract.plan.errors import PlanError


def plan_text(data: bytes, source: str) -> str:
    """``data`` decoded as UTF-8, or a PlanError located at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PlanError(
            f"not UTF-8 text (byte offset {exc.start})", Location(source, line, column)
        ) from None


def read_plan_bytes(path: Path) -> bytes:
    """The plan file's bytes; an unreadable file is a PlanError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PlanError(f"cannot read plan: {reason}", Location(str(path))) from None


def read_plan_text(path: Path) -> str:
    """The plan file as text (:func:`read_plan_bytes` then :func:`plan_text`)."""
    return plan_text(read_plan_bytes(path), str(path))
