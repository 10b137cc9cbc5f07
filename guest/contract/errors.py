"""Typed errors that carry *where* something went wrong.

Library code raises these; only the CLI (or the guest's PID 1 loop) turns them into
messages and exit codes, so the location travels with the error instead of being
re-guessed from a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a source file; line and column are 1-based, 0 means unknown."""

    path: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line and self.column:
            return f"{self.path}:{self.line}:{self.column}"
        if self.line:
            return f"{self.path}:{self.line}"
        return self.path


class CloudbootError(Exception):
    """Base of every error we expect users to see; its ``str`` is the user's message."""

    exit_code = 1

    def __init__(self, message: str, *, where: Location | str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.where:
            return f"{self.where}: {self.message}"
        return self.message


class FormatError(CloudbootError):
    """Bytes that do not parse as the structure they claim to be (carries a byte offset)."""

    def __init__(self, message: str, *, offset: int | None = None, what: str = "") -> None:
        where = None
        if what or offset is not None:
            where = f"{what or 'data'}" + (f"@{offset:#x}" if offset is not None else "")
        super().__init__(message, where=where)
        self.offset = offset
