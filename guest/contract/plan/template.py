"""HCL templates: quoted strings and heredocs with ``${ }``, ``%{ }`` and strip markers.

A template is read straight from the source text (it is not made of tokens): literal
text, ``${ expr }`` interpolations and ``%{ if/else/endif/for/endfor }`` directives,
each of which may carry ``~`` strip markers that remove the whitespace (newlines
included) next to it. ``$${`` and ``%%{`` are the literal ``${`` and ``%{``. Quoted
strings resolve backslash escapes and may not contain a newline; heredocs keep
backslashes as written, and ``<<-`` removes the common indentation of their lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.lexer import LITERALS, NAME, Cursor, ParserBase, describe

_QUOTED_TEXT = re.compile(r'[^"\\$%\n]+')
PLAIN_QUOTED = re.compile(r'[^"\\$%\n]*"')
_HEREDOC_TEXT = re.compile(r"[^$%]+")
#: A quoted string whose only templates are ``${ name.name... }`` (most templates in a
#: plan: ``${arch}``, ``${local.x}``, ``${self.name}``), up to and with its closing quote.
#: Possessive and atomic (``++``, ``*+``, ``(?>)``): a failing match fails in linear time.
_SIMPLE = re.compile(r'(?:[^"\\$%\n]++|\$\{ *+(?>' + NAME + r")(?:\.(?>" + NAME + r'))*+ *+\})*+"')
_SIMPLE_INTERP = re.compile(r"\$\{ *(" + NAME + r"(?:\." + NAME + r")*) *\}")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_DIRECTIVES = ("if", "else", "endif", "for", "endfor")


@dataclass
class _Lit:
    """Literal text of a template and where it starts."""

    text: str
    start: int


@dataclass
class _Item:
    """An interpolation (kind "interp", ``expr`` set) or a directive (its keyword)."""

    kind: str
    start: int
    strip_left: bool
    strip_right: bool
    expr: ex.Expr | None = None
    names: tuple[str | None, str] | None = None  # a for directive's key and value names


class TemplateParser(ParserBase):
    """Mixed into the parser: needs its cursor and its expression parser."""

    def quoted(self, open_at: int) -> ex.Expr:
        """The template after an opening ``"`` (the cursor is just past it)."""
        cur = self.cur
        plain = PLAIN_QUOTED.match(cur.text, cur.pos)
        if plain is not None:  # the common case: no escapes, no ${ or %{
            cur.pos = plain.end()
            return ex.Literal(plain.group()[:-1], cur.where(open_at))
        simple = simple_template(cur, open_at)
        if simple is not None:
            return simple
        items = self._items(heredoc_end=None)
        return self._build(items, self.cur.where(open_at))

    def heredoc(self, intro: str, start: int) -> ex.Expr:
        """The template after ``<<ID`` / ``<<-ID`` and its newline (cursor past them)."""
        cur = self.cur
        marker = intro.lstrip("<-").strip()
        body_start = pos = cur.pos
        text = cur.text
        while True:
            end = text.find("\n", pos)
            line = text[pos : len(text) if end < 0 else end]
            if line.strip() == marker:
                break
            if end < 0:
                opened = cur.where(start)  # hclsyntax reports it at the end of the file
                raise cur.error(
                    f"heredoc <<{marker} opened at {opened.line}:{opened.column} is never "
                    f"closed by a {marker} line",
                    len(text),
                )
            pos = end + 1
        items = self._items(heredoc_end=pos)
        if intro.startswith("<<-"):
            _flush(items, text, body_start, pos)
        cur.pos = pos + len(line.rstrip("\r"))  # the marker's newline ends the argument
        return self._build(items, cur.where(start))

    # -- reading ----------------------------------------------------------------------

    def _items(self, heredoc_end: int | None) -> list[_Lit | _Item]:
        cur, text = self.cur, self.cur.text
        items: list[_Lit | _Item] = []
        open_at = cur.pos - 1
        limit = len(text) if heredoc_end is None else heredoc_end
        literal = _QUOTED_TEXT if heredoc_end is None else _HEREDOC_TEXT
        buf: list[str] = []
        buf_start = pos = cur.pos

        def flush() -> None:
            if buf:
                items.append(_Lit("".join(buf), buf_start))
                buf.clear()

        while True:
            if pos >= limit:
                if heredoc_end is not None:
                    break
                raise cur.error("this quoted string is never closed", open_at)
            m = literal.match(text, pos, limit)
            if m is not None:
                if not buf:
                    buf_start = pos
                buf.append(m.group())
                pos = m.end()
                continue
            char = text[pos]
            if char == '"':
                pos += 1
                break
            if char == "\n":
                raise cur.error(
                    "a quoted string cannot span lines; write \\n for a newline, or use a "
                    "heredoc (<<EOT ... EOT) for text over several lines",
                    pos,
                )
            if char == "\\":
                if not buf:
                    buf_start = pos
                value, pos = self._escape(pos)
                buf.append(value)
                continue
            after = text[pos + 1 : pos + 3]
            if after.startswith("{"):  # ${ or %{
                flush()
                cur.pos = pos + 2
                items.append(self._interpolation(pos) if char == "$" else self._directive(pos))
                buf_start = pos = cur.pos
                continue
            if after == char + "{":  # $${ or %%{: the literal ${ / %{
                if not buf:
                    buf_start = pos
                buf.append(char + "{")
                pos += 3
                continue
            if not buf:
                buf_start = pos
            buf.append(char)
            pos += 1
        flush()
        cur.pos = pos
        return items

    def _escape(self, pos: int) -> tuple[str, int]:
        text = self.cur.text
        letter = text[pos + 1 : pos + 2]
        if letter in _ESCAPES:
            return _ESCAPES[letter], pos + 2
        if letter in ("u", "U"):
            size = 4 if letter == "u" else 8
            digits = text[pos + 2 : pos + 2 + size]
            if len(digits) == size and all(c in "0123456789abcdefABCDEF" for c in digits):
                code = int(digits, 16)
                if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                    return chr(code), pos + 2 + size
        raise self.cur.error(
            f'invalid escape \\{letter}; quoted strings know \\n \\r \\t \\" \\\\ \\uNNNN '
            "\\UNNNNNNNN",
            pos,
        )

    def _strip_marker(self) -> bool:
        if self.cur.peek().kind == "~":
            self.cur.next()
            return True
        return False

    def _close(self, start: int, what: str) -> bool:
        strip = self._strip_marker()
        token = self.cur.peek()
        if token.kind == '"' and what == "${":  # hclsyntax points at the ${ for this one
            raise self.cur.error("this ${ is never closed with } before the string ends", start)
        if token.kind != "}":
            raise self.cur.unexpected(token, f"}} to close the {what} opened here")
        self.cur.next()
        return strip

    def _interpolation(self, start: int) -> _Item:
        cur = self.cur
        cur.push(newlines=False)
        try:
            left = self._strip_marker()
            value = self.expression()
            right = self._close(start, "${")
        finally:
            cur.pop()
        return _Item("interp", start, left, right, expr=value)

    def _directive(self, start: int) -> _Item:
        cur = self.cur
        cur.push(newlines=False)
        try:
            left = self._strip_marker()
            token = cur.peek()
            if token.kind != "name" or token.text not in _DIRECTIVES:
                raise cur.unexpected(token, "if, else, endif, for or endfor after %{")
            cur.next()
            item = _Item(token.text, start, left, False)
            if token.text == "if":
                item.expr = self.expression()
            elif token.text == "for":
                first = self.name("a variable name after for")
                second = None
                if cur.peek().kind == ",":
                    cur.next()
                    second = self.name("a variable name after ,")
                keyword = cur.peek()
                if keyword.kind != "name" or keyword.text != "in":
                    raise cur.unexpected(keyword, "in")
                cur.next()
                item.names = (first, second) if second is not None else (None, first)
                item.expr = self.expression()
            item.strip_right = self._close(start, "%{")
        finally:
            cur.pop()
        return item

    # -- building ---------------------------------------------------------------------

    def _build(self, items: list[_Lit | _Item], where: Location) -> ex.Expr:
        _strip(items)
        parts, stop = self._parts(items, 0, ())
        if stop < len(items):
            item = items[stop]
            assert isinstance(item, _Item)
            message = f"%{{{item.kind}}} without a matching opening directive"
            raise self.cur.error(message, item.start)
        return _template(parts, where)

    def _parts(
        self, items: list[_Lit | _Item], i: int, until: tuple[str, ...]
    ) -> tuple[list[str | ex.Expr], int]:
        """Parts from ``items[i]`` up to a directive in ``until`` (its index is returned)."""
        parts: list[str | ex.Expr] = []
        while i < len(items):
            item = items[i]
            if isinstance(item, _Lit):
                if item.text:
                    parts.append(item.text)
                i += 1
                continue
            where = self.cur.where(item.start)
            if item.kind == "interp":
                assert item.expr is not None
                parts.append(item.expr)
                i += 1
            elif item.kind in until:
                return parts, i
            elif item.kind == "if":
                assert item.expr is not None
                yes, i = self._parts(items, i + 1, ("else", "endif"))
                no: list[str | ex.Expr] = []
                if i < len(items) and items[i].kind == "else":  # type: ignore[union-attr]
                    no, i = self._parts(items, i + 1, ("endif",))
                self._ended(items, i, "endif", item)
                parts.append(
                    ex.TemplateIf(item.expr, _template(yes, where), _template(no, where), where)
                )
                i += 1
            elif item.kind == "for":
                assert item.expr is not None and item.names is not None
                body, i = self._parts(items, i + 1, ("endfor",))
                self._ended(items, i, "endfor", item)
                key, value = item.names
                parts.append(ex.TemplateFor(key, value, item.expr, _template(body, where), where))
                i += 1
            else:
                return parts, i
        return parts, i

    def _ended(self, items: list[_Lit | _Item], i: int, end: str, opener: _Item) -> None:
        if i >= len(items):
            raise self.cur.error(f"%{{{opener.kind}}} is never closed by %{{{end}}}", opener.start)
        item = items[i]
        assert isinstance(item, _Item)
        if item.kind != end:
            raise self.cur.error(f"expected %{{{end}}}, found %{{{item.kind}}}", item.start)


def simple_template(cur: Cursor, open_at: int) -> ex.Template | None:
    """The template after ``"`` at ``open_at`` when its interpolations are all plain
    traversals (``_SIMPLE``), built in one pass; None sends it down the full path.

    The nodes are the ones the full path builds, at the same offsets (the root at its
    name, each ``GetAttr`` at its dot): tests/test_plan_template_fast.py compares the two
    on every template of the plan corpus and on generated ones. Parsing a plan is most of
    validating it, and templates were a third of parsing (bench/plan_parse.py).
    """
    text, pos = cur.text, cur.pos
    whole = _SIMPLE.match(text, pos)
    if whole is None:
        return None
    end = whole.end() - 1  # the closing quote
    parts: list[str | ex.Expr] = []
    for m in _SIMPLE_INTERP.finditer(text, pos, end):
        names = m.group(1).split(".")
        if names[0] in LITERALS:  # a literal root: the full path builds it
            return None
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        at = m.start(1)
        value: ex.Expr = ex.Variable(names[0], cur.where(at))
        at += len(names[0])
        for name in names[1:]:
            value = ex.GetAttr(value, name, cur.where(at))
            at += 1 + len(name)
        parts.append(value)
        pos = m.end()
    if end > pos:
        parts.append(text[pos:end])
    cur.pos = end + 1
    return ex.Template(tuple(parts), cur.where(open_at))


def _template(parts: list[str | ex.Expr], where: Location) -> ex.Expr:
    if all(isinstance(p, str) for p in parts):
        return ex.Literal("".join(str(p) for p in parts), where)
    return ex.Template(tuple(parts), where)


def _strip(items: list[_Lit | _Item]) -> None:
    """Apply ``~`` markers: trim the whitespace of the literal text next to them."""
    for i, item in enumerate(items):
        if isinstance(item, _Lit):
            continue
        if item.strip_left and i > 0 and isinstance(items[i - 1], _Lit):
            items[i - 1].text = items[i - 1].text.rstrip()  # type: ignore[union-attr]
        if item.strip_right and i + 1 < len(items) and isinstance(items[i + 1], _Lit):
            items[i + 1].text = items[i + 1].text.lstrip()  # type: ignore[union-attr]


def _flush(items: list[_Lit | _Item], text: str, start: int, end: int) -> None:
    """``<<-``: remove the smallest indentation of the body's lines from every line."""
    lines = text[start:end].split("\n")
    indents = [len(line) - len(line.lstrip(" \t")) for line in lines if line.strip()]
    indent = min(indents, default=0)
    if not indent:
        return
    for item in items:
        if not isinstance(item, _Lit):
            continue
        out, at_line_start = [], item.start == start or text[item.start - 1] == "\n"
        for piece in item.text.split("\n"):
            if at_line_start:
                cut = len(piece) - len(piece.lstrip(" \t"))
                piece = piece[min(cut, indent) :]
            out.append(piece)
            at_line_start = True
        item.text = "\n".join(out)


__all__ = ["PLAIN_QUOTED", "TemplateParser", "describe", "template_start"]


def template_start(text: str, pos: int) -> int | None:
    """Where a ``${`` or ``%{`` starts in the quoted string at ``pos`` (before it ends)."""
    while pos < len(text) and text[pos] not in '"\n':
        if text[pos] == "\\" or text.startswith(("$${", "%%{"), pos):
            pos += 2 if text[pos] == "\\" else 3
        elif text.startswith(("${", "%{"), pos):
            return pos
        else:
            pos += 1
    return None
