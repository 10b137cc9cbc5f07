"""HCL text -> a positioned document: bodies, blocks, attributes and expression trees.

A hand-written recursive-descent parser for HCL native syntax with its newline rules
(docs/plan-language.md §2), because python-hcl2's lark grammar cannot be made to agree
with upstream's parser: it treats newlines as optional almost everywhere (a conditional
or an operator broken over lines, two arguments on one line and a block with an argument
on its ``{`` line all parse), it has no strip markers in ``${~ ~}`` at all, and it keeps a
heredoc as one opaque token whose template we would have to parse separately anyway. A
token pass over its tree could not recover the newlines it throws away. The parser here
is also what the guest runs, so it avoids lark's import and table loading under TCG.

Function calls parse (so the error names them) and are rejected, as upstream's guest has
no functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guest.contract.errors import Location
from guest.contract.plan import expr as ex, number
from guest.contract.plan.collection import CollectionParser
from guest.contract.plan.errors import PlanError
from guest.contract.plan.lexer import LITERALS, Cursor, Token, describe
from guest.contract.plan.template import PLAIN_QUOTED, template_start
from guest.contract.plan.traversal import TraversalParser


@dataclass(frozen=True)
class Attribute:
    """``name = expression`` with the position of ``name``."""

    name: str
    value: ex.Expr
    where: Location


@dataclass(frozen=True)
class Block:
    """``type "label" ... { body }`` with the position of ``type``."""

    type: str
    labels: tuple[str, ...]
    body: Body
    where: Location


@dataclass(frozen=True)
class Body:
    """A file's or a block's arguments and nested blocks, in source order."""

    attributes: tuple[Attribute, ...]
    blocks: tuple[Block, ...]
    where: Location


#: Binary operators by precedence, loosest first (all left-associative), as HCL.
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"||"}),
    frozenset({"&&"}),
    frozenset({"==", "!="}),
    frozenset({"<", ">", "<=", ">="}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
)
BINARY_OPERATORS = frozenset().union(*_LEVELS)
_PRECEDENCE = {op: level for level, ops in enumerate(_LEVELS) for op in ops}
#: What may follow a whole-expression string: a closer, or the end of its line.
_FOLLOWS_PLAIN = re.compile(r"[ \t]*([,\])}]|\r?\n|#|//|\Z)")
_CLOSERS = frozenset(",])}")
#: How deeply expressions may nest before we refuse (recursion in the parser).
MAX_DEPTH = 200


def parse_document(text: str, source: str) -> Body:
    """Parse plan text into a positioned Body; every failure is a PlanError with a location."""
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    parser = _Parser(Cursor(text, source))
    try:
        return parser.body(top=True)
    except RecursionError:
        raise PlanError("HCL nests too deeply", Location(source, 1, 1)) from None


def parse_expression(text: str, source: str = "<expression>") -> ex.Expr:
    """Parse one expression (used by tests and tools); errors point into ``text`` itself."""
    parser = _Parser(Cursor(text, source))
    parser.cur.push(newlines=False)
    value = parser.expression()
    token = parser.cur.peek()
    if token.kind != "eof":
        raise parser.cur.unexpected(token, "the end of the expression")
    return value


class _Parser(TraversalParser, CollectionParser):
    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.depth = 0

    def loc(self, token: Token) -> Location:
        return self.cur.where(token.start)

    def name(self, what: str) -> str:
        return self.cur.expect("name", what).text

    # -- structure ---------------------------------------------------------------------

    def body(self, *, top: bool) -> Body:
        cur = self.cur
        start = cur.peek()
        attributes: list[Attribute] = []
        blocks: list[Block] = []
        while True:
            token = cur.skip_newlines()
            if token.kind == "eof" if top else token.kind == "}":
                break
            if token.kind != "name":
                if token.kind == "eof":
                    brace = cur.text.rfind("{", 0, start.start)  # hclsyntax points at it
                    raise cur.error("this block's { is never closed with }", brace)
                raise cur.unexpected(token, "an argument (name = value) or a block")
            item = self.item()
            if isinstance(item, Attribute):
                attributes.append(item)
            else:
                blocks.append(item)
            self.end_of_line(item)
        return Body(tuple(attributes), tuple(blocks), self.loc(start))

    def end_of_line(self, item: Attribute | Block) -> None:
        token = self.cur.peek()
        if token.kind in ("nl", "eof"):
            return
        what = "argument" if isinstance(item, Attribute) else "block"
        raise self.cur.error(
            f"HCL syntax error: unexpected {describe(token)}; expected a newline after this "
            f"{what} (each argument and block goes on its own line)",
            token.start,
        )

    def item(self) -> Attribute | Block:
        cur = self.cur
        head = cur.next()
        equals = cur.peek()
        if equals.kind == "=":
            cur.take(equals)
            return Attribute(head.text, self.expression(), self.loc(head))
        labels: list[str] = []
        while True:
            token = cur.peek()
            if token.kind == "{":
                break
            if token.kind == "name":
                labels.append(cur.take(token).text)
            elif token.kind == '"':
                cur.take(token)
                at = template_start(cur.text, cur.pos)
                if at is not None:  # hclsyntax says so there, before reading the template
                    raise cur.error("block labels cannot contain ${...} or %{...}", at)
                label = self.quoted(token.start)
                labels.append(str(label.value) if isinstance(label, ex.Literal) else "")
            else:  # with no label read, hclsyntax points at the name, not the token
                at = None if labels else head.start
                raise cur.unexpected(token, f"= or a block's {{ after {head.text!r}", at)
        open_brace = cur.next()
        return Block(head.text, tuple(labels), self.block_body(open_brace), self.loc(head))

    def block_body(self, open_brace: Token) -> Body:
        """After ``{``: a multi-line body, or HCL's one-line ``{ name = value }``."""
        cur = self.cur
        token = cur.peek()
        if token.kind == "nl":
            body = self.body(top=False)
            cur.next()  # the }
            return body
        where = self.loc(open_brace)
        if token.kind == "}":
            cur.next()
            return Body((), (), where)
        if token.kind != "name":
            raise cur.unexpected(token, "a newline or an argument after {")
        cur.next()
        if cur.peek().kind != "=":  # hclsyntax says so at the name, before reading further
            raise cur.error(
                "a one-line block can hold only one argument, not a block; start the "
                "block's body on a new line after {",
                token.start,
            )
        cur.pos = token.start
        item = self.item()
        assert isinstance(item, Attribute)  # a name then = (checked above)
        close = cur.peek()
        if close.kind != "}":
            raise cur.error(
                "a block with an argument on its { line must end with } on that same line; "
                "put the argument on its own line after {",
                close.start,
            )
        cur.next()
        return Body((item,), (), where)

    # -- expressions -------------------------------------------------------------------

    def expression(self) -> ex.Expr:
        plain = self.plain_string()
        if plain is not None:
            return plain
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.cur.error("expression nests too deeply", self.cur.pos)
        try:
            condition = self.binary(0)
            cur = self.cur
            token = cur.peek()
            if token.kind != "?":
                return condition
            cur.take(token)
            if_true = self.expression()
            token = cur.peek()
            if token.kind != ":":
                raise cur.unexpected(token, ": (the else part of ? :)")
            cur.take(token)
            if_false = self.expression()
            return ex.Conditional(condition, if_true, if_false, condition.where)
        finally:
            self.depth -= 1

    def plain_string(self) -> ex.Literal | None:
        """A quoted string with no escape or template that is the whole expression (most
        values in a plan), read without the operator and step machinery; else None."""
        cur = self.cur
        token = cur.peek()
        if token.kind != '"':
            return None
        plain = PLAIN_QUOTED.match(cur.text, token.end)
        if plain is None:
            return None
        end = _FOLLOWS_PLAIN.match(cur.text, plain.end())
        if end is None or (cur.skip_newlines_now and end.group(1) not in _CLOSERS):
            return None  # an operator, a step or (where newlines are skipped) maybe one next
        cur.pos = plain.end()
        return ex.Literal(plain.group()[:-1], cur.where(token.start))

    def binary(self, min_level: int) -> ex.Expr:
        """Precedence climbing over ``_LEVELS`` (one look-ahead per operand, not per level)."""
        left = self.unary()
        cur = self.cur
        while True:
            token = cur.peek()
            op = token.kind
            level = _PRECEDENCE.get(op)
            if level is None or level < min_level:
                return left
            cur.take(token)
            right = self.binary(level + 1)  # left-associative: same level loops here
            left = ex.Binary(op, left, right, left.where)

    def unary(self) -> ex.Expr:
        """``-`` and ``!`` apply to one term (with its steps) or to another unary operation.

        hclsyntax's grammar in its spec says a term, but its parser (what upstream runs)
        accepts ``!!x`` and ``- -1``: tests/test_plan_oracle.py checks this against it.
        """
        cur = self.cur
        token = cur.peek()
        if token.kind not in ("-", "!"):
            return self.term(token)
        cur.take(token)
        operand = self.unary()
        if token.kind == "-" and isinstance(operand, ex.Literal):
            value = operand.value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return ex.Literal(number.negate(value), self.loc(token))
        return ex.Unary(token.kind, operand, self.loc(token))

    def term(self, token: Token) -> ex.Expr:
        """The term starting at ``token`` (just peeked), with its steps."""
        cur = self.cur
        kind = token.kind
        value: ex.Expr
        if kind == "num":
            cur.take(token)
            value = ex.Literal(_number(token, cur), self.loc(token))
        elif kind == "name":
            cur.take(token)
            value = self.named(token)
        elif kind == '"':
            cur.take(token)
            value = self.quoted(token.start)
        elif kind == "heredoc":
            cur.take(token)
            value = self.heredoc(token.text, token.start)
        elif kind == "(":
            cur.take(token)
            cur.push(newlines=False)
            try:
                value = self.expression()
                self.closing(")", token)
            finally:
                cur.pop()
        elif kind == "[":
            value = self.tuple_or_for()
        elif kind == "{":
            value = self.object_or_for()
        else:
            raise cur.unexpected(token, "an expression")
        return self.steps(value)

    def closing(self, kind: str, opener: Token) -> None:
        token = self.cur.peek()
        if token.kind != kind:
            raise self.cur.unexpected(token, f"{kind} to close the {opener.text} opened earlier")
        self.cur.take(token)

    def named(self, token: Token) -> ex.Expr:
        where = self.loc(token)
        if token.text in LITERALS:
            return ex.Literal(LITERALS[token.text], where)
        if self.cur.peek().kind in ("(", "::"):
            raise self.cur.error(
                f"function calls are not supported in plans ({token.text}(...)); upstream's "
                "guest has no functions either",
                token.start,
            )
        return ex.Variable(token.text, where)


def _number(token: Token, cur: Cursor) -> int | float:
    text = token.text
    if "." in text or "e" in text or "E" in text:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise cur.error("number out of range", token.start)
        return value
    return int(text)
