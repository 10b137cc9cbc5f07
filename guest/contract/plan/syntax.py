"""HCL text -> a positioned document: bodies, blocks, attributes and expression trees.

python-hcl2's dict output loses positions and returns expressions as ``${...}`` text, so
we take its lark parse tree instead (``hcl2.parses_to_tree``, built with
``propagate_positions``): every block, attribute and sub-expression keeps its line and
column, and we never re-parse expression text. We also skip python-hcl2's transformer and
serializer, which matters in the guest, where Python runs ~10x slower under TCG.

HCL constructs outside the plan language (function calls, for-expressions, splats,
heredocs, template directives, arithmetic) are rejected here with their position.
"""

from __future__ import annotations

from dataclasses import dataclass

from hcl2.utils import process_escape_sequences
from lark import Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan import tables
from guest.contract.plan.errors import PlanError


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
    attributes: tuple[Attribute, ...]
    blocks: tuple[Block, ...]
    where: Location


#: Operators of the plan language; HCL's arithmetic (+ - * / %) is not part of it.
BINARY_OPERATORS = frozenset({"==", "!=", "<", ">", "<=", ">=", "&&", "||"})

#: Constructs outside the plan language, by lark rule: what the error calls them.
_UNSUPPORTED = {
    "function_call": "function calls",
    "for_tuple_expr": "for expressions",
    "for_object_expr": "for expressions",
    "attr_splat_expr_term": "splat expressions (.*)",
    "full_splat_expr_term": "splat expressions ([*])",
    "heredoc_template": "heredoc strings (<<EOF)",
    "heredoc_template_trim": "heredoc strings (<<-EOF)",
    "template_string": "template directives (%{...})",
    "template_if_start": "template directives (%{if ...})",
    "template_else": "template directives (%{else})",
    "template_endif": "template directives (%{endif})",
    "template_for_start": "template directives (%{for ...})",
    "template_endfor": "template directives (%{endfor})",
}
_INSTEAD = {
    "heredoc_template": "; use a quoted string or a list cmdline",
    "heredoc_template_trim": "; use a quoted string or a list cmdline",
}

#: How lark's terminal names read in a syntax error.
_TOKEN_WORDS = {
    "NAME": "a name",
    "DBLQUOTE": '"',
    "INT_LITERAL": "a number",
    "FLOAT_LITERAL": "a number",
    "LBRACE": "{",
    "RBRACE": "}",
    "LSQB": "[",
    "RSQB": "]",
    "LPAR": "(",
    "RPAR": ")",
    "EQ": "=",
    "COLON": ":",
    "COMMA": ",",
    "QMARK": "?",
    "DOT": ".",
    "NL_OR_COMMENT": "a newline",
    "INTERP_START": "${",
    "STRING_CHARS": "text",
    "$END": "end of file",
}
_EXPRESSION_STARTS = {"NAME", "DBLQUOTE", "INT_LITERAL", "LSQB", "LPAR"}


def parse_document(text: str, source: str) -> Body:
    """Parse plan text into a positioned Body; every failure is a PlanError with a location."""
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        # As hcl2.parses_to_tree: the grammar needs a final newline (lark has no EOF token)
        tree = tables.parser().parse(text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, source) from None
    except LarkError as exc:
        raise PlanError(f"HCL syntax error: {exc}", Location(source, 1, 1)) from None
    except RecursionError:
        raise PlanError("HCL nests too deeply", Location(source, 1, 1)) from None
    builder = _Builder(source)
    try:
        return builder.body(_children(tree)[0], Location(source, 1, 1))
    except RecursionError:
        raise PlanError("expression nests too deeply", Location(source, 1, 1)) from None


def parse_expression(text: str, source: str = "<expression>") -> ex.Expr:
    """Parse one expression (used by tests and tools); errors point into ``text`` itself."""
    body = parse_document(f"x = {text}", source)
    if len(body.attributes) != 1 or body.blocks:
        raise PlanError("expected exactly one expression", Location(source, 1, 1))
    return body.attributes[0].value


def _syntax_error(exc: UnexpectedInput, text: str, source: str) -> PlanError:
    line = max(1, exc.line if isinstance(exc.line, int) and exc.line > 0 else text.count("\n") + 1)
    column = max(1, exc.column if isinstance(exc.column, int) and exc.column > 0 else 1)
    where = Location(source, line, column)
    if isinstance(exc, UnexpectedCharacters):
        return PlanError(f"HCL syntax error: unexpected character {exc.char!r}", where)
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            found = "end of file"
        elif token.type == "NL_OR_COMMENT" or str(token).startswith("\n"):
            found = "end of line"
        else:
            found = repr((str(token).strip().splitlines() or [""])[0][:40])
        expected = sorted(exc.expected or ())
        return PlanError(f"HCL syntax error: unexpected {found}{_expected(expected)}", where)
    return PlanError("HCL syntax error: unexpected end of file", where)


def _expected(names: list[str]) -> str:
    if not names:
        return ""
    if set(names) >= _EXPRESSION_STARTS:
        return "; expected an expression"
    words = sorted({_TOKEN_WORDS.get(n, n.lower()) for n in names})
    return "; expected " + " or ".join(words)


def _children(node: Tree[Token]) -> list[Tree[Token]]:
    """Sub-trees that carry meaning (tokens and comments/newlines dropped)."""
    return [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]


def _tokens(node: Tree[Token]) -> list[Token]:
    return [c for c in node.children if isinstance(c, Token)]


class _Builder:
    """Turns lark trees into our Body/Expr dataclasses, keeping every node's position."""

    def __init__(self, source: str) -> None:
        self.source = source

    def loc(self, node: Tree[Token] | Token, fallback: Location | None = None) -> Location:
        if isinstance(node, Token):
            return Location(self.source, node.line or 1, node.column or 1)
        if not node.meta.empty:
            return Location(self.source, node.meta.line, node.meta.column)
        return fallback or Location(self.source, 1, 1)

    # -- structure ---------------------------------------------------------------------

    def body(self, node: Tree[Token], fallback: Location) -> Body:
        attributes: list[Attribute] = []
        blocks: list[Block] = []
        for child in _children(node):
            if child.data == "attribute":
                name_node, value_node = _children(child)
                attributes.append(
                    Attribute(self.name(name_node), self.expr(value_node), self.loc(child))
                )
            elif child.data == "block":
                blocks.append(self.block(child))
        return Body(tuple(attributes), tuple(blocks), self.loc(node, fallback))

    def block(self, node: Tree[Token]) -> Block:
        parts = _children(node)
        type_node, label_nodes, body_node = parts[0], parts[1:-1], parts[-1]
        labels = tuple(self.label(n) for n in label_nodes)
        where = self.loc(node)
        return Block(self.name(type_node), labels, self.body(body_node, where), where)

    def name(self, node: Tree[Token]) -> str:
        """An attribute or block name: identifier, keyword or literal word, as written."""
        return "".join(str(t) for t in _tokens(node)).strip()

    def label(self, node: Tree[Token]) -> str:
        if node.data != "string":
            return self.name(node)
        value = self.template(node)
        if isinstance(value, ex.Literal) and isinstance(value.value, str):
            return value.value
        raise PlanError("block labels cannot contain ${...} interpolations", self.loc(node))

    # -- expressions -------------------------------------------------------------------

    def expr(self, node: Tree[Token]) -> ex.Expr:
        kind = str(node.data)
        where = self.loc(node)
        if kind in _UNSUPPORTED:
            instead = _INSTEAD.get(kind, "")
            raise PlanError(f"{_UNSUPPORTED[kind]} are not supported in plans{instead}", where)
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise PlanError(f"unsupported expression ({kind})", where)
        result: ex.Expr = handler(node, where)
        return result

    def _expr_term(self, node: Tree[Token], where: Location) -> ex.Expr:
        (inner,) = _children(node)  # parentheses are tokens, so one child either way
        return self.expr(inner)

    def _conditional(self, node: Tree[Token], where: Location) -> ex.Expr:
        condition, if_true, if_false = (self.expr(c) for c in _children(node))
        return ex.Conditional(condition, if_true, if_false, where)

    def _binary_op(self, node: Tree[Token], where: Location) -> ex.Expr:
        left_node, term = _children(node)
        operator_node, right_node = _children(term)
        op = "".join(str(t) for t in _tokens(operator_node)).strip()
        if op not in BINARY_OPERATORS:
            raise PlanError(
                f"operator {op!r} is not supported in plans (only comparisons, && and ||)",
                self.loc(operator_node, where),
            )
        return ex.Binary(op, self.expr(left_node), self.expr(right_node), where)

    def _unary_op(self, node: Tree[Token], where: Location) -> ex.Expr:
        (operand,) = _children(node)
        return ex.Unary(str(_tokens(node)[0]), self.expr(operand), where)

    def _int_lit(self, node: Tree[Token], where: Location) -> ex.Expr:
        return ex.Literal(int(str(_tokens(node)[0])), where)

    def _float_lit(self, node: Tree[Token], where: Location) -> ex.Expr:
        value = float(str(_tokens(node)[0]))
        if value in (float("inf"), float("-inf")):
            raise PlanError("number out of range", where)
        return ex.Literal(value, where)

    def _literal_value(self, node: Tree[Token], where: Location) -> ex.Expr:
        word = str(_tokens(node)[0])
        return ex.Literal({"true": True, "false": False, "null": None}[word], where)

    def _identifier(self, node: Tree[Token], where: Location) -> ex.Expr:
        return ex.Variable(self.name(node), where)

    def _string(self, node: Tree[Token], where: Location) -> ex.Expr:
        return self.template(node)

    def template(self, node: Tree[Token]) -> ex.Literal | ex.Template:
        """A quoted string: text (escapes resolved, ``$${`` -> ``${``) and interpolations.

        Go-template text such as ``{{.IPSpec}}`` is plain HCL text and passes through as is.
        """
        parts: list[str | ex.Expr] = []
        for part in _children(node):
            (piece,) = part.children
            if isinstance(piece, Token):
                if piece.type == "STRING_CHARS":
                    text = process_escape_sequences(str(piece))
                else:  # ESCAPED_INTERPOLATION / ESCAPED_DIRECTIVE: $${ -> ${, %%{ -> %{
                    text = str(piece)[1:]
                if parts and isinstance(parts[-1], str):
                    parts[-1] += text
                else:
                    parts.append(text)
            elif piece.data == "interpolation":
                (inner,) = _children(piece)
                parts.append(self.expr(inner))
            else:
                self.expr(piece)  # raises: template directives are not supported
        where = self.loc(node)
        if all(isinstance(p, str) for p in parts):
            return ex.Literal("".join(str(p) for p in parts), where)
        return ex.Template(tuple(parts), where)

    def _tuple(self, node: Tree[Token], where: Location) -> ex.Expr:
        return ex.TupleExpr(tuple(self.expr(c) for c in _children(node)), where)

    def _object(self, node: Tree[Token], where: Location) -> ex.Expr:
        items = []
        for elem in _children(node):
            key_node, value_node = _children(elem)
            items.append(
                ex.ObjectItem(self.object_key(key_node), self.expr(value_node), self.loc(elem))
            )
        return ex.ObjectExpr(tuple(items), where)

    def object_key(self, node: Tree[Token]) -> str:
        """HCL object keys: a bare name is the key itself (not a variable), or a quoted string."""
        inner = _children(node)
        if not inner:  # a keyword used as a key
            return self.name(node)
        key = self.expr(inner[0])
        if isinstance(key, ex.Variable):
            return key.name
        if isinstance(key, ex.Literal) and isinstance(key.value, str):
            return key.value
        raise PlanError("object keys must be names or quoted strings", self.loc(node))

    def _index_expr_term(self, node: Tree[Token], where: Location) -> ex.Expr:
        target_node, index_node = _children(node)
        target = self.expr(target_node)
        if index_node.data == "short_index":  # value.0
            return ex.GetAttr(target, str(_tokens(index_node)[-1]), where)
        (key_node,) = _children(index_node)
        return ex.Index(target, self.expr(key_node), where)

    def _get_attr_expr_term(self, node: Tree[Token], where: Location) -> ex.Expr:
        target_node, attr_node = _children(node)
        (name_node,) = _children(attr_node)
        return ex.GetAttr(self.expr(target_node), self.name(name_node), where)
