"""Which paths under the workspace the watcher and `cloudboot publish` ignore.

Three sources, checked in this order: version-control and state directories (``.git``,
``.cloudboot`` ...), editor temporary and swap files (vim's ``.x.swp`` and ``4913`` probe,
emacs ``#x#``/``.#x`` lock files, ``x~`` backups, JetBrains safe-write files ...), and
gitignore-style patterns from ``.cloudbootignore`` plus ``[watch].ignore``. Editors write
those temporary files on every save; reacting to them would double every run.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".cloudbootignore"

#: Directory names never worth watching, at any depth.
IGNORED_DIRS = frozenset({".git", ".hg", ".svn", ".cloudboot", "__pycache__", ".idea", ".vscode"})

#: Basenames editors and tools write while saving (fnmatch patterns).
EDITOR_TEMP_PATTERNS = (
    "*.swp",
    "*.swo",
    "*.swx",
    "*.swpx",
    ".*.sw?",
    "4913",  # vim probes directory writability with this name
    "*~",
    ".#*",  # emacs lock file
    "#*#",  # emacs auto-save
    "*.kate-swp",
    "*___jb_tmp___",
    "*___jb_old___",
    ".goutputstream-*",  # GTK safe-save
    "*.tmp",
    ".*.tmp",
    ".DS_Store",
    "*.part",
    "sed[A-Za-z0-9][A-Za-z0-9][A-Za-z0-9][A-Za-z0-9][A-Za-z0-9][A-Za-z0-9]",  # sed -i
)


@dataclass(frozen=True)
class IgnorePattern:
    """One gitignore-style line: ``!`` negates, a trailing ``/`` matches directories only,
    a ``/`` elsewhere anchors it to the workspace root, ``**`` spans directories."""

    text: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        text = line.rstrip("\n").rstrip()
        if not text or text.startswith("#"):
            return None
        pattern = text
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        if pattern.startswith("\\"):  # "\#file" or "\!file": a literal first character
            pattern = pattern[1:]
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if not pattern:
            return None
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        body = _glob_to_regex(pattern)
        regex = re.compile(body if anchored else f"(?:.*/)?{body}")
        return cls(text=text, regex=regex, negate=negate, dir_only=dir_only)


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            inner = glob[i + 1 : end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append(f"[{inner}]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


class IgnoreRules:
    """Decides whether a path (relative to the workspace root) is ignored.

    As in git, the last matching pattern wins, and a file inside an ignored directory
    stays ignored whatever later patterns say about the file itself.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in (IgnorePattern.parse(line) for line in patterns) if p]

    @classmethod
    def for_workspace(cls, root: Path, extra: Iterable[str] = ()) -> IgnoreRules:
        """Built-in rules, then ``<root>/.cloudbootignore``, then ``extra`` (the config)."""
        lines: list[str] = []
        path = root / IGNORE_FILE
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
        lines += list(extra)
        return cls(lines)

    def is_ignored(self, rel: str, *, is_dir: bool = False) -> bool:
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            return False
        if any(p in IGNORED_DIRS for p in parts):
            return True
        if not is_dir and is_editor_temp(parts[-1]):
            return True
        for depth in range(1, len(parts) + 1):
            last = depth == len(parts)
            if self._matches("/".join(parts[:depth]), is_dir=is_dir or not last):
                return True
        return False

    def _matches(self, path: str, *, is_dir: bool) -> bool:
        ignored = False
        for pattern in self.patterns:
            if pattern.dir_only and not is_dir:
                continue
            if pattern.regex.fullmatch(path):
                ignored = not pattern.negate
        return ignored


def is_editor_temp(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in EDITOR_TEMP_PATTERNS)
