"""The machinery of a declarative settings table (the table itself is ``publisher.config``).

A setting is a dataclass field declared with :func:`setting`: default, help, whether a path
must exist, and a ``parse`` hook for values TOML has no type for (enums, architectures,
ranges, a MAC). :func:`convert` checks a TOML value against the declared type and the
hook; :func:`type_name` and :func:`toml_value` let errors and the commented template speak
about the same types.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest.contract.errors import CloudbootError, Location


class SettingError(ValueError):
    """A value that does not fit its setting; the message starts with the key."""


#: Turns a value (each item of a list) into the setting's value; ValueError says why not.
Parse = Callable[[Any], Any]


def setting(
    default: Any, help: str, *, must_exist: bool = False, parse: Parse | None = None
) -> Any:
    """Declare one setting: default, help text, whether a path must exist, a parse hook.

    ``parse`` gets the TOML value (for a list: each item) once it has the declared basic
    type (a string for enums and arches); its ValueError becomes an error naming the
    key and the file.
    """
    meta = {"help": help, "must_exist": must_exist, "parse": parse}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def at_least(minimum: int) -> Parse:
    def check(value: int) -> int:
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def mac_address(value: str) -> str:
    """A fixed unicast-style MAC, lower case (vfkit has no ``mac=auto``)."""
    if not _MAC.match(value):
        raise ValueError(
            f"expected a fixed MAC like 52:54:00:12:34:56, got {value!r} (vfkit rejects mac=auto)"
        )
    return value.lower()


def type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", Path: "a path (string)"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return (
            "a list of "
            + type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
            + "s"
        )
    if origin is dict:
        return "a table of strings"
    return str(tp)


def convert(value: Any, tp: Any, key: str, root: Path, parse: Parse | None = None) -> Any:
    """Check ``value`` against the declared type and convert it (paths resolved).

    With a ``parse`` hook, each leaf value (a list's items) goes through it after the
    basic type check; a leaf of a type TOML has no name for (an enum, Arch) must be a
    string that the hook turns into it.
    """

    def fail() -> SettingError:
        shown = repr(value) if not isinstance(value, str) else f'"{value}"'
        return SettingError(f"{key}: expected {type_name(tp)}, got {type(value).__name__} {shown}")

    if isinstance(tp, types.UnionType):  # X | None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value in (None, "") else convert(value, inner, key, root, parse)
    origin = typing.get_origin(tp)
    if parse is not None and origin is None:
        if tp in (bool, int, str, Path):
            basic = convert(value, tp, key, root)
        elif isinstance(value, str):
            basic = value
        else:
            raise fail()
        try:
            return parse(basic)
        except ValueError as exc:
            raise SettingError(f"{key}: {exc}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        if value < 0:
            raise SettingError(f"{key}: must not be negative, got {value}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise fail()
        path = Path(value).expanduser()
        return path if path.is_absolute() else root / path
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise fail() from None
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        (item,) = typing.get_args(tp)
        return [convert(v, item, f"{key}[{i}]", root, parse) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail()
        return dict(value)
    raise TypeError(f"unsupported setting type {tp!r}")  # a bug in SECTIONS, not user input


def plain(value: Any) -> Any:
    """A setting's value as JSON (paths as strings, enums as their values)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if value is None:
        return '""'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    return str(value)


def toml_error_where(message: str, text: str) -> tuple[str, int]:
    """A tomllib error as (message, line): the line apart, a table declared twice with both.

    tomllib says ``Cannot declare ('registry',) twice (at line 6, column 10)``; a user
    wants ``:6`` where the editor jumps, and where the first ``[registry]`` is.
    """
    found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if not found:
        return message, 0
    line = int(found.group(1))
    message = message[: found.start()].strip()
    twice = re.match(r"Cannot declare \((.*)\) twice", message)
    if twice:
        parts = [part.strip().strip("'\"") for part in twice.group(1).split(",")]
        name = ".".join(part for part in parts if part)
        header = re.compile(rf"^\s*\[\s*{re.escape(name)}\s*\]")
        first = next((n for n, x in enumerate(text.splitlines(), 1) if header.match(x)), 0)
        message = f"[{name}] declared twice (first at line {first}): merge the two tables"
    return message, line


def key_line(text: str, table: str, key: str | None = None) -> int:
    """The 1-based line of ``[table]``'s header, or of ``key = ...`` inside it; 0 when the
    text spells it otherwise (an inline or dotted table). tomllib keeps no positions, and
    an error about a value should still say where the editor has to jump."""
    header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]\s*(#.*)?$")
    assignment = re.compile(rf"^\s*[\"']?{re.escape(key or '')}[\"']?\s*=")
    inside = not table  # "": the top-level table, before the first header
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("["):
            inside = bool(header.match(line))
            if inside and key is None:
                return number
        elif inside and key is not None and assignment.match(line):
            return number
    return 0


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """`` (did you mean 'cpus'?)`` for a near miss, else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class TomlSource:
    """A settings file's name and text: parsed with errors that say where, and where a
    table or key of it is set."""

    path: str
    text: str = ""

    def loads(self, error: type[CloudbootError]) -> dict[str, Any]:
        """The parsed text; a syntax error raises ``error`` at ``file:line``."""
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            message, line = toml_error_where(str(exc), self.text)
            raise error(f"invalid TOML: {message}", where=self._at(line)) from None

    def where(self, table: str, key: str | None = None) -> str | Location:
        return self._at(key_line(self.text, table, key))

    def where_key(self, dotted: str) -> str | Location:
        """Where a dotted key path (``arch.x86_64.kernel.deb``, ``initramfs.files[1].src``)
        is set: its own line, else the nearest enclosing key or table header the text
        shows (a key inside an inline table is on its parent key's line)."""
        parts = re.sub(r"\[\d+\].*$", "", dotted).split(".")
        for end in range(len(parts), 0, -1):
            table, key = ".".join(parts[: end - 1]), parts[end - 1]
            line = key_line(self.text, table, key) or key_line(self.text, ".".join(parts[:end]))
            if line:
                return self._at(line)
        return self.path

    def _at(self, line: int) -> str | Location:
        return Location(self.path, line) if line else self.path
