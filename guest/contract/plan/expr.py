"""The expression tree of the plan language: the HCL subset upstream plans use.

The nodes are deliberately few (literals, templates, tuples, objects, variable roots with
attribute/index steps, unary/binary operators, conditionals): anything else HCL can
express is rejected when the tree is built, with the position of the construct. Every
node carries its Location so evaluation errors point at the exact sub-expression.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from guest.contract.errors import Location

#: A plan value: what expressions evaluate to (HCL's string, number, bool, null,
#: tuple and object, as plain Python values).
Value = str | int | float | bool | None | list["Value"] | dict[str, "Value"]


@dataclass(frozen=True)
class Literal:
    """A constant: quoted string without interpolation, number, true/false/null."""

    value: Value
    where: Location


@dataclass(frozen=True)
class Template:
    """A quoted string with ``${...}`` interpolations; parts are text or expressions."""

    parts: tuple[str | Expr, ...]
    where: Location


@dataclass(frozen=True)
class TupleExpr:
    items: tuple[Expr, ...]
    where: Location


@dataclass(frozen=True)
class ObjectItem:
    """One ``key = value`` of an object; ``key`` is a static name (HCL's bare or quoted key)."""

    key: str
    value: Expr
    where: Location


@dataclass(frozen=True)
class ObjectExpr:
    items: tuple[ObjectItem, ...]
    where: Location


@dataclass(frozen=True)
class Variable:
    """A root name: ``arch``, ``local``, ``self``, ``meta`` or ``lldp`` (others are errors)."""

    name: str
    where: Location


@dataclass(frozen=True)
class GetAttr:
    """``value.name`` (and HCL's ``value.0`` short index, kept as the name ``"0"``)."""

    target: Expr
    name: str
    where: Location


@dataclass(frozen=True)
class Index:
    """``value[key]``."""

    target: Expr
    key: Expr
    where: Location


@dataclass(frozen=True)
class Unary:
    op: str  # "!" or "-"
    operand: Expr
    where: Location


@dataclass(frozen=True)
class Binary:
    op: str  # "==", "!=", "<", ">", "<=", ">=", "&&", "||"
    left: Expr
    right: Expr
    where: Location


@dataclass(frozen=True)
class Conditional:
    condition: Expr
    if_true: Expr
    if_false: Expr
    where: Location


Expr = (
    Literal
    | Template
    | TupleExpr
    | ObjectExpr
    | Variable
    | GetAttr
    | Index
    | Unary
    | Binary
    | Conditional
)


def children(expr: Expr) -> Iterator[Expr]:
    """The direct sub-expressions of ``expr`` (for walks that must see every branch)."""
    if isinstance(expr, Template):
        yield from (p for p in expr.parts if not isinstance(p, str))
    elif isinstance(expr, TupleExpr):
        yield from expr.items
    elif isinstance(expr, ObjectExpr):
        yield from (item.value for item in expr.items)
    elif isinstance(expr, GetAttr):
        yield expr.target
    elif isinstance(expr, Index):
        yield expr.target
        yield expr.key
    elif isinstance(expr, Unary):
        yield expr.operand
    elif isinstance(expr, Binary):
        yield expr.left
        yield expr.right
    elif isinstance(expr, Conditional):
        yield expr.condition
        yield expr.if_true
        yield expr.if_false


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of the tree, parents before children (iterative: no recursion limit)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(children(node))))


@dataclass(frozen=True)
class Reference:
    """A variable root and the first attribute name after it (``local.x`` -> local, x)."""

    root: str
    name: str | None
    where: Location


def first_step_name(expr: GetAttr | Index) -> str | None:
    """The static name of a traversal step: ``.x`` or ``["x"]``; None when computed."""
    if isinstance(expr, GetAttr):
        return expr.name
    if isinstance(expr.key, Literal) and isinstance(expr.key.value, str):
        return expr.key.value
    return None


def references(expr: Expr) -> Iterator[Reference]:
    """Every variable reference in ``expr``, in all branches, with its first step's name."""
    roots_with_step: set[int] = set()
    for node in walk(expr):
        if isinstance(node, GetAttr | Index) and isinstance(node.target, Variable):
            roots_with_step.add(id(node.target))
            yield Reference(node.target.name, first_step_name(node), node.target.where)
    for node in walk(expr):
        if isinstance(node, Variable) and id(node) not in roots_with_step:
            yield Reference(node.name, None, node.where)
