"""The expression tree of the plan language: the HCL subset upstream plans use.

The nodes cover HCL native syntax's expressions except function calls (which upstream's
guest rejects too, so the parser does): literals, templates with ``%{if}``/``%{for}``
directives, tuples, objects, variable roots with attribute/index steps, splats, ``for``
expressions, unary/binary operators and conditionals. Every node carries its Location so
evaluation errors point at the exact sub-expression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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
    """``[a, b, ...]``."""

    items: tuple[Expr, ...]
    where: Location


@dataclass(frozen=True)
class ObjectItem:
    """One ``key = value`` of an object; ``key`` is a static name (HCL's bare or quoted key)."""

    key: str
    value: Expr
    where: Location
    #: A computed key (``(local.k) = 1``, ``"${x}" = 1``); ``key`` is then its source text.
    key_expr: Expr | None = None


@dataclass(frozen=True)
class ObjectExpr:
    """``{ key = value, ... }``."""

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
class Splat:
    """``source[*].steps`` / ``source.*.steps``: ``each`` applied to every element.

    ``each`` is written against the placeholder :data:`SPLAT_ITEM` (a Variable whose name no
    plan can spell), so the steps are ordinary GetAttr/Index nodes.
    """

    source: Expr
    each: Expr
    where: Location


#: The element a splat's steps apply to (a name HCL identifiers cannot spell).
SPLAT_ITEM = "*splat*"


@dataclass(frozen=True)
class ForExpr:
    """``[for k, v in coll : value if cond]`` or ``{for k, v in coll : key => value...}``."""

    key_var: str | None
    value_var: str
    collection: Expr
    key: Expr | None  # None: a tuple result
    value: Expr
    condition: Expr | None
    grouping: bool  # the ``...`` after an object for's value
    where: Location


@dataclass(frozen=True)
class TemplateIf:
    """``%{ if cond }...%{ else }...%{ endif }`` inside a template: evaluates to text."""

    condition: Expr
    if_true: Expr
    if_false: Expr
    where: Location


@dataclass(frozen=True)
class TemplateFor:
    """``%{ for k, v in coll }...%{ endfor }`` inside a template: evaluates to text."""

    key_var: str | None
    value_var: str
    collection: Expr
    body: Expr
    where: Location


@dataclass(frozen=True)
class Unary:
    """``!x`` or ``-x``."""

    op: str  # "!" or "-"
    operand: Expr
    where: Location


@dataclass(frozen=True)
class Binary:
    """``left op right`` (HCL's arithmetic, comparison and logic operators)."""

    op: str  # "==", "!=", "<", ">", "<=", ">=", "&&", "||", "+", "-", "*", "/", "%"
    left: Expr
    right: Expr
    where: Location


@dataclass(frozen=True)
class Conditional:
    """``condition ? if_true : if_false``."""

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
    | Splat
    | ForExpr
    | TemplateIf
    | TemplateFor
)


def children(expr: Expr) -> Iterator[Expr]:
    """The direct sub-expressions of ``expr`` (for walks that must see every branch)."""
    return iter(_CHILDREN[type(expr)](expr))


def _object_children(expr: Any) -> list[Expr]:
    out: list[Expr] = []
    for item in expr.items:
        if item.key_expr is not None:
            out.append(item.key_expr)
        out.append(item.value)
    return out


_CHILDREN: dict[type, Callable[[Any], Iterable[Expr]]] = {
    Literal: lambda e: (),
    Variable: lambda e: (),
    Template: lambda e: [p for p in e.parts if not isinstance(p, str)],
    TupleExpr: lambda e: e.items,
    ObjectExpr: _object_children,
    GetAttr: lambda e: (e.target,),
    Index: lambda e: (e.target, e.key),
    Unary: lambda e: (e.operand,),
    Binary: lambda e: (e.left, e.right),
    Conditional: lambda e: (e.condition, e.if_true, e.if_false),
    Splat: lambda e: (e.source, e.each),
    ForExpr: lambda e: [x for x in (e.collection, e.key, e.value, e.condition) if x is not None],
    TemplateIf: lambda e: (e.condition, e.if_true, e.if_false),
    TemplateFor: lambda e: (e.collection, e.body),
}


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


def _binds(expr: Expr) -> tuple[str, ...]:
    """Names a node binds for (some of) its children: for-variables and the splat item."""
    if isinstance(expr, ForExpr | TemplateFor):
        return (expr.value_var,) if expr.key_var is None else (expr.key_var, expr.value_var)
    if isinstance(expr, Splat):
        return (SPLAT_ITEM,)
    return ()


_BINDERS = (ForExpr, TemplateFor, Splat)


#: ``references`` itself, or a memo of it that several checks of one plan share.
FindReferences = Callable[[Expr], list[Reference]]


def references(expr: Expr) -> list[Reference]:
    """Every free variable reference in ``expr``, in all branches, with its first step's name.

    Names bound by an enclosing ``for`` (and a splat's element) are not references. The
    common case has no such binders and takes a plain walk (validation runs this on every
    attribute of every plan, several times), and a literal, most attributes, none at all.
    """
    kind = type(expr)
    if kind is Literal:
        return []
    found: list[tuple[Reference, int]] = []
    roots_with_step: set[int] = set()
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind in _BINDERS:
            return list(_scoped_references(expr))
        if kind is GetAttr or kind is Index:
            target = node.target  # type: ignore[union-attr]
            if type(target) is Variable:
                roots_with_step.add(id(target))
                found.append((Reference(target.name, first_step_name(node), target.where), 0))  # type: ignore[arg-type]
        elif kind is Variable:
            found.append((Reference(node.name, None, node.where), id(node)))  # type: ignore[union-attr]
        elif kind is Literal:
            continue
        kids = _CHILDREN[kind](node)
        if kids:
            stack.extend(reversed(tuple(kids)))
    return [ref for ref, node_id in found if node_id == 0 or node_id not in roots_with_step]


def _scoped_references(expr: Expr) -> Iterator[Reference]:
    stack: list[tuple[Expr, frozenset[str]]] = [(expr, frozenset())]
    found: list[tuple[Reference, int]] = []
    roots_with_step: set[int] = set()
    while stack:
        node, bound = stack.pop()
        if isinstance(node, GetAttr | Index) and isinstance(node.target, Variable):
            if node.target.name not in bound:
                roots_with_step.add(id(node.target))
                ref = Reference(node.target.name, first_step_name(node), node.target.where)
                found.append((ref, 0))
        elif isinstance(node, Variable) and node.name not in bound:
            found.append((Reference(node.name, None, node.where), id(node)))
        kids = _CHILDREN[type(node)](node)
        if not kids:
            continue
        names = _binds(node)
        if not names:
            stack.extend((kid, bound) for kid in reversed(list(kids)))
            continue
        # a for's collection (and a splat's source), the first child, sees outer names only
        first, *rest = kids
        inner = bound | frozenset(names)
        stack.extend((kid, inner) for kid in reversed(rest))
        stack.append((first, bound))
    for ref, node_id in found:
        if node_id == 0 or node_id not in roots_with_step:
            yield ref
