"""The token layer of HCL native syntax (docs/plan-language.md §2), newline-aware.

HCL's native syntax is line-oriented: an argument or block ends at a newline, and a
newline inside an expression ends it too, except where the expression sits inside
``( )``, ``[ ]`` or a ``${ }`` interpolation (there newlines are ignored, so a long
conditional can be wrapped in parentheses). The cursor keeps that as a stack of modes:
``push(newlines=True/False)`` around each bracket, and ``peek`` skips newline tokens
only where they are insignificant. Comments: ``#`` and ``//`` run to the end of the line
and count as its newline; ``/* */`` counts as whitespace.

Strings and heredocs are not tokens here: the parser reads their text directly from the
source (templates nest expressions, which nest templates), using the cursor's position.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from bisect import bisect_right
from typing import NamedTuple

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.errors import PlanError

_TOKEN = re.compile(
    r"""
    (?:[ \t\r]+|/\*(?:.|\n)*?\*/)*   # whitespace and block comments before the token
    (?:
    (?P<open_comment>/\*)
    |(?P<nl>(?:\n|\#[^\n]*(?:\n|$)|//[^\n]*(?:\n|$)))
    |(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    |(?P<name>[^\W\d][\w-]*)
    |(?P<heredoc><<-?(?:[^\W\d][\w-]*)[ \t]*\r?\n)
    |(?P<op>==|!=|<=|>=|&&|\|\||=>|\.\.\.|::|\$\{|[-+*/%<>=!?:.,()\[\]{}~"])
    |(?P<eof>\Z)
    )
    """,
    re.VERBOSE,
)
#: An HCL identifier (a letter or _, then letters, digits, _ and -), for every pattern
#: that reads names: tokens here, quoted templates' fast path (template.py).
NAME = r"[^\W\d][\w-]*"
_NAME = re.compile(NAME)
#: The names that are literals, not variables.
LITERALS = {"true": True, "false": False, "null": None}
#: One-character tokens that never start a longer one.
_SINGLE = frozenset('{}[](),"?~')
_SPACE = re.compile(r"(?:[ \t\r]+|/\*(?:.|\n)*?\*/)*")
#: What a line ends with when an operator was left waiting for its operand.
_CONTINUES = set("?:+-*/%<>")
#: Builds a Token without NamedTuple's Python-level __new__ (one call less per token).
_new = tuple.__new__
_OPERATORS = {"||", "&&", "==", "!="}


class Token(NamedTuple):
    """``kind`` is "nl", "num", "name", "heredoc", "eof" or the operator text itself."""

    kind: str
    text: str
    start: int
    end: int


#: How a token reads in an error message.
def describe(token: Token) -> str:
    if token.kind == "nl":
        return "end of line" if token.text.strip() == "" else "a comment"
    if token.kind == "eof":
        return "end of file"
    if token.kind == "name":
        return f"name {token.text!r}"
    if token.kind == "num":
        return f"number {token.text}"
    if token.kind == "heredoc":
        return "a heredoc"
    return repr(token.text)


class Cursor:
    """Position in the source, the newline-mode stack, and offset -> line:column."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.newlines = [True]
        self.skip_newlines_now = False
        self._lines = [0] + [m.end() for m in re.finditer("\n", text)]
        self._peek_pos, self._peek_skip, self._peek_token = -1, False, Token("eof", "", 0, 0)
        self._where: dict[int, Location] = {}  # a node's and its token's are the same offset

    def where(self, offset: int) -> Location:
        found = self._where.get(offset)
        if found is None:
            line = bisect_right(self._lines, offset)
            found = Location(self.source, line, offset - self._lines[line - 1] + 1)
            self._where[offset] = found
        return found

    def error(self, message: str, offset: int) -> PlanError:
        return PlanError(message, self.where(offset))

    def push(self, *, newlines: bool) -> None:
        self.newlines.append(newlines)
        self.skip_newlines_now = not newlines

    def pop(self) -> None:
        self.newlines.pop()
        self.skip_newlines_now = not self.newlines[-1]

    def _scan(self, pos: int) -> Token:
        # Fast paths for what most of a plan is made of (the guest parses under TCG); the
        # full pattern below decides everything else.
        text = self.text
        while text[pos : pos + 1] == " ":
            pos += 1
        char = text[pos : pos + 1]
        if char in _SINGLE:
            return _new(Token, (char, char, pos, pos + 1))
        if char == "\n":
            return _new(Token, ("nl", char, pos, pos + 1))
        if char == "#":  # a comment and its newline are one newline token
            end = text.find("\n", pos) + 1 or len(text)
            return _new(Token, ("nl", text[pos:end], pos, end))
        if char == "=" and text[pos + 1 : pos + 2] not in ("=", ">"):
            return _new(Token, ("=", char, pos, pos + 1))
        name = _NAME.match(text, pos)
        if name is not None:
            return _new(Token, ("name", name.group(), pos, name.end()))
        m = _TOKEN.match(text, pos)
        if m is None:
            at = _SPACE.match(self.text, pos).end()  # type: ignore[union-attr]
            raise self.error(f"HCL syntax error: unexpected character {self.text[at]!r}", at)
        kind = m.lastgroup or "op"
        start = m.start(kind)
        if kind == "open_comment":
            raise self.error("a /* comment is never closed with */", start)
        value = m.group(kind)
        return _new(Token, (value if kind == "op" else kind, value, start, m.end()))

    def peek(self) -> Token:
        """The next token; newline tokens are skipped where the current mode ignores them."""
        if self._peek_pos == self.pos and self._peek_skip is self.skip_newlines_now:
            return self._peek_token  # the parser looks at most tokens several times
        skip = self.skip_newlines_now
        token = self._scan(self.pos)
        while skip and token.kind == "nl":
            token = self._scan(token.end)
        self._peek_pos, self._peek_skip, self._peek_token = self.pos, skip, token
        return token

    def next(self) -> Token:
        token = self.peek()
        self.pos = token.end
        return token

    def take(self, token: Token) -> Token:
        """Consume ``token``, just returned by :meth:`peek` (saves looking it up again)."""
        self.pos = token.end
        return token

    def skip_newlines(self) -> Token:
        """Skip newline tokens; the first other token (peeked, not consumed)."""
        token = self.peek()
        while token.kind == "nl":
            self.pos = token.end
            token = self.peek()
        return token

    def expect(self, kind: str, what: str) -> Token:
        token = self.peek()
        if token.kind != kind:
            raise self.unexpected(token, what)
        self.pos = token.end
        return token

    def unexpected(self, token: Token, expected: str, at: int | None = None) -> PlanError:
        """The error for ``token``, reported at it or at ``at`` (where hclsyntax does)."""
        message = f"HCL syntax error: unexpected {describe(token)}; expected {expected}"
        before = self.text[: token.start].rstrip()
        if token.kind == "nl" and (before[-1:] in _CONTINUES or before[-2:] in _OPERATORS):
            message += " (an expression continues on the next line only inside ( ) or [ ])"
        return self.error(message, token.start if at is None else at)


class ParserBase:
    """What the parser's mixins (templates, collections) use of the parser."""

    cur: Cursor

    @abstractmethod
    def expression(self) -> ex.Expr: ...

    @abstractmethod
    def name(self, what: str) -> str: ...

    @abstractmethod
    def loc(self, token: Token) -> Location: ...

    @abstractmethod
    def closing(self, kind: str, opener: Token) -> None: ...
