"""The one error path of the CLI: every way a command can end becomes an exit code.

0 ok, 1 failed, 2 usage, 3 "invalid" (``verify``: the signature was checked and is not
good, as opposed to 1: it could not be checked), 130 interrupted. Whatever escapes a
command is said once on stderr, naming the input (file:line, key, ref, path) and what to
do; a traceback is shown only with ``-v``. With ``--json`` the failure is also printed on
stdout as ``{"ok": false, "error": {...}}`` so scripts never parse prose.

Ctrl-C: the first one raises ``KeyboardInterrupt`` in the main thread, so ``finally``
blocks and context managers (temp files, daemons) clean up; then the process ends with
130 without joining worker threads that may still be waiting on a dead registry. A second
Ctrl-C ends it at once, without a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from guest.contract.errors import CloudbootError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: Root options accepted anywhere before ``--`` (moved in front of the subcommand).
GLOBAL_FLAGS = ("--verbose",)
GLOBAL_VALUE_OPTIONS = ("-C", "--workspace", "--log-format")


class InvalidError(CloudbootError):
    """Checked and found wrong (a bad signature): exit 3, distinct from "could not check"."""

    exit_code = EXIT_INVALID


class UsageError(CloudbootError):
    """A bad combination of arguments that the option parser cannot see: exit 2."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Failure:
    """What a failed command tells the user; ``where`` is the input it names, if any."""

    message: str
    exit_code: int
    kind: str
    where: str | None = None

    def to_json(self) -> dict[str, Any]:
        error = {"type": self.kind, "message": self.message, "where": self.where}
        return {"ok": False, "error": {**error, "exit_code": self.exit_code}}


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another path",
    errno.EISDIR: "it is a directory: name a file",
    errno.ENOTDIR: "a parent is not a directory: check the path",
    errno.EFBIG: "the file is too large for this file system",
}


def os_hint(exc: OSError) -> str:
    """``"; what to do"`` for the errors a user can act on (a full disk ...), else ``""``."""
    hint = _OS_HINTS.get(exc.errno or 0, "")
    return f"; {hint}" if hint else ""


def json_path(path: Path | str) -> str:
    """Paths in JSON output: always absolute, so scripts need not know our cwd."""
    return str(Path(path).absolute())


def failure_of(exc: BaseException) -> Failure:
    """The user's message for ``exc``; pure, so the table of errors is testable."""
    if isinstance(exc, CloudbootError):
        where = str(exc.where) if exc.where else None
        return Failure(str(exc), exc.exit_code, type(exc).__name__, where)
    if isinstance(exc, OSError):
        name = exc.filename if exc.filename is not None else None
        reason = exc.strerror or str(exc)
        text = f"{name}: {reason}" if name else reason
        return Failure(f"{text}{os_hint(exc)}", EXIT_FAILED, "OSError",
                       str(name) if name else None)  # fmt: skip
    if isinstance(exc, MemoryError):
        return Failure("out of memory", EXIT_FAILED, "MemoryError")
    return Failure(
        f"unexpected {type(exc).__name__}: {exc} (run with -v for a traceback and report it)",
        EXIT_FAILED,
        type(exc).__name__,
    )


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move root options given after the subcommand (``cloudboot push plan -v``) to the front.

    Users of git, oras and skopeo put ``-v`` or ``-C DIR`` anywhere; click only accepts
    them before the subcommand. Everything after ``--`` is left alone.
    """
    front: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if _whole_root_option(arg):
            front.append(arg)
        elif arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def command_words(args: Sequence[str]) -> tuple[str, ...]:
    """The command of a hoisted command line (root options first) and its subcommand
    when the next word is one: ``()`` when the first word after the root options is an
    option (``--help``, ``--version``) or there is none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in GLOBAL_VALUE_OPTIONS:
            i += 2
        elif _whole_root_option(arg):
            i += 1
        elif arg.startswith("-"):
            return ()
        else:
            words = args[i : i + 2]
            return tuple(words if len(words) == 2 and not words[1].startswith("-") else words[:1])
    return ()


def _whole_root_option(arg: str) -> bool:
    """A root option in one word: ``--verbose``, ``-vv``, ``--workspace=DIR``."""
    return (
        arg in GLOBAL_FLAGS
        or (arg.startswith("-v") and set(arg[1:]) == {"v"})
        or any(arg.startswith(f"{o}=") for o in GLOBAL_VALUE_OPTIONS if o.startswith("--"))
    )


def verbosity(argv: Sequence[str]) -> int:
    count = 0
    for arg in argv:
        if arg == "--":
            break
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
    return count


class _Interrupts:
    """SIGINT handling: the first raises KeyboardInterrupt, the second ends the process."""

    seen = False

    def first(self, _signum: int, _frame: FrameType | None) -> None:
        self.seen = True
        signal.signal(signal.SIGINT, self.second)
        raise KeyboardInterrupt

    def second(self, _signum: int, _frame: FrameType | None) -> None:
        os.write(2, b"interrupted\n")
        os._exit(EXIT_INTERRUPTED)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.first)


INTERRUPTS = _Interrupts()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _interrupted() -> NoReturn:
    sys.stderr.write("interrupted\n")
    _flush()
    # Worker threads (uploads retrying against a dead registry) are not joined: the
    # main thread has already unwound and cleaned up, so nothing is left half-written.
    os._exit(EXIT_INTERRUPTED)


def report(failure: Failure, *, as_json: bool, usage: str = "") -> None:
    if as_json:
        sys.stdout.write(json.dumps(failure.to_json()) + "\n")
    sys.stderr.write(f"error: {failure.message}\n")
    if usage:
        sys.stderr.write(usage)


def run_cli(tree: Callable[[tuple[str, ...]], Callable[..., Any]], argv: Sequence[str]) -> NoReturn:
    """Run the typer app that ``tree`` builds for the command of ``argv`` (see
    :func:`command_words`) and exit with the code of how it ended."""
    # typer vendors click (typer._click) and raises its exceptions when not standalone
    from typer._click.exceptions import (
        ClickException,
        NoArgsIsHelpError,
        UsageError as ClickUsageError,
    )
    from typer.exceptions import Abort

    args = hoist_global_options(argv)
    verbose = verbosity(args)
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    INTERRUPTS.install()
    try:
        app = tree(command_words(args))
        code = app(args=args, prog_name="cloudboot", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ClickUsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f"Try '{exc.ctx.command_path} -h' for help.\n"
        report(Failure(exc.format_message(), EXIT_USAGE, "UsageError"), as_json=as_json, usage=hint)
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        report(Failure(exc.format_message(), exc.exit_code, type(exc).__name__), as_json=as_json)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Abort:  # typer turns EOF on stdin into Abort; Ctrl-C arrives as 130 instead
        if INTERRUPTS.seen:
            _interrupted()
        report(Failure("input ended (EOF on stdin)", EXIT_FAILED, "Abort"), as_json=as_json)
        sys.exit(EXIT_FAILED)
    except SystemExit:
        raise
    except BaseException as exc:
        if INTERRUPTS.seen:
            _interrupted()
        if verbose:
            traceback.print_exc()
        failure = failure_of(exc)
        report(failure, as_json=as_json)
        _flush()
        sys.exit(failure.exit_code)
    if INTERRUPTS.seen:
        _interrupted()
    sys.exit(code if isinstance(code, int) else EXIT_OK)
