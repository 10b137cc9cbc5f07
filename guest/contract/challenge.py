"""``WWW-Authenticate`` challenges (RFC 7235 §4.1): the one parser host and guest share.

A registry answers 401 with one or more challenges, e.g.
``Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull,push"``
(docs/wire-formats.md §2, "Auth"). The grammar allows several challenges in one header
(``Basic realm="x", Bearer realm="y"``), parameter names in any case, and values as a
token or a quoted string with backslash escapes, in which commas are part of the value.
The publisher and the guest's pull client both read challenges here, so they cannot
disagree on which realm or scope a registry asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SEPARATORS = re.compile(r"[\s,]*")
_SPACES = re.compile(r"[ \t]*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_BARE = re.compile(r"[^,\s]*")
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: its scheme and parameters."""

    scheme: str  # lower case: "bearer", "basic" ...
    params: Mapping[str, str] = field(default_factory=dict)  # names lower case


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    match = pattern.match(text, pos)
    return match.end() if match else pos


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in the header, in order; text that does not parse ends the list."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while name := _TOKEN.match(header, _skip(_SEPARATORS, header, pos)):
        after = _skip(_SPACES, header, name.end())
        if not (header.startswith("=", after) and challenges):  # a new scheme
            challenges.append((name.group(0).lower(), {}))
            pos = name.end()
            continue
        pos = _skip(_SPACES, header, after + 1)  # a parameter of the last scheme
        if quoted := _QUOTED.match(header, pos):
            value, pos = _ESCAPE.sub(r"\1", quoted.group(1)), quoted.end()
        else:
            end = _skip(_BARE, header, pos)
            value, pos = header[pos:end], end
        challenges[-1][1][name.group(0).lower()] = value
    return [Challenge(scheme, params) for scheme, params in challenges]


def parse_challenge(header: str) -> Challenge:
    """The challenge to answer: Bearer if offered (it works with or without credentials),
    else Basic, else the first one; ``Challenge("")`` for an empty or unparsable header."""
    challenges = parse_challenges(header)
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return challenges[0] if challenges else Challenge("")
