"""Evaluate plan expressions against the scopes of docs/wire-formats.md §1.4.

Scopes: ``arch`` (the guest's plan arch), ``local.*`` (evaluated lazily, so locals may use
each other in any order; a cycle is an error), ``self.name/arch/version`` (only inside a
target, and not inside that target's own ``arch``/``version``), ``meta.*`` (the metadata
document) and ``lldp.*`` (neighbour facts).

Our rules where HCL would be stricter or undefined:
- a missing key anywhere under ``meta`` yields null instead of an error, because the host
  validates plans without knowing the metadata the guest will fetch;
- null interpolates as the empty string (``"${meta.x}"`` is ``""`` when meta has no x).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from guest.contract.errors import Location
from guest.contract.plan import expr as ex, number
from guest.contract.plan.errors import PlanError
from guest.contract.plan.expr import Value
from guest.contract.plan.iterate import (
    for_expr,
    splat,
    template_for,
    template_if,
)

#: The root names a plan may use.
ROOTS = ("arch", "local", "self", "meta", "lldp")
#: What ``self`` exposes (the scalars known before the target's other attributes).
SELF_FIELDS = ("name", "arch", "version")

#: Why ``self`` is unavailable, per place (shared with the static reference check).
SELF_OUTSIDE_TARGET = "self.* is only available inside a target block"
SELF_IN_LOCALS = "locals cannot use self.*"
SELF_IN_SCALARS = "self.* cannot be used inside arch or version (self is built from them)"

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def type_name(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def to_text(value: Value, where: Location) -> str:
    """A value as template text (HCL's string conversion; null -> "" by our rule)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number.to_text(value)
    if isinstance(value, str):
        return value
    raise PlanError(f"cannot use a {type_name(value)} as text", where)


def unknown_local_message(name: str, known: Mapping[str, object]) -> str:
    listed = ", ".join(sorted(known)) or "none are defined"
    return f"local.{name} is not defined; locals: {listed}"


def unknown_self_message(name: str) -> str:
    return f"self.{name} is not available; self has: {', '.join(SELF_FIELDS)}"


def unknown_lldp_message(name: str, known: Mapping[str, object]) -> str:
    return f"lldp.{name} is not an LLDP fact; lldp has: {', '.join(known)}"


def unknown_root_message(name: str) -> str:
    return f'unknown variable "{name}"; plans can use arch, local.*, self.*, meta.*, lldp.*'


@dataclass
class Locals:
    """The plan's locals, evaluated on first use and cached (errors are cached too)."""

    exprs: Mapping[str, ex.Expr]
    arch: str
    meta: Mapping[str, Value]
    lldp: Mapping[str, Value]
    _values: dict[str, Value | PlanError] = field(default_factory=dict)
    _in_progress: list[str] = field(default_factory=list)

    def get(self, name: str, where: Location) -> Value:
        if name not in self.exprs:
            raise PlanError(unknown_local_message(name, self.exprs), where)
        cached = self._values.get(name)
        if isinstance(cached, PlanError):
            raise cached
        if name in self._values:
            return cached
        if name in self._in_progress:
            chain = " -> ".join([*self._in_progress[self._in_progress.index(name) :], name])
            raise PlanError(f"local.{name} refers to itself ({chain})", where)
        self._in_progress.append(name)
        try:
            scope = Scope(self, self_value=None, self_reason=SELF_IN_LOCALS)
            self._values[name] = value = evaluate(self.exprs[name], scope)
        except PlanError as exc:
            self._values[name] = exc
            raise
        finally:
            self._in_progress.pop()
        return value


@dataclass(frozen=True)
class Scope:
    """What an expression can see; ``self_value`` None means self is unavailable (why: reason)."""

    locals: Locals
    self_value: Mapping[str, Value] | None = None
    self_reason: str = SELF_OUTSIDE_TARGET
    #: Names bound by enclosing ``for`` expressions and splats.
    bound: Mapping[str, Value] = field(default_factory=dict)

    def bind(self, names: Mapping[str, Value]) -> Scope:
        return Scope(self.locals, self.self_value, self.self_reason, {**self.bound, **names})


def evaluate(expr: ex.Expr, scope: Scope) -> Value:
    """Evaluate one expression; every failure is a PlanError at the sub-expression's position."""
    try:
        return _eval(expr, scope)
    except RecursionError:
        raise PlanError("expression nests too deeply", expr.where) from None


def _eval(expr: ex.Expr, scope: Scope) -> Value:
    handler: Callable[[ex.Expr, Scope], Value] = _HANDLERS[type(expr)]
    return handler(expr, scope)


def _literal(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.Literal)
    return expr.value


def _template(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.Template)
    if len(expr.parts) == 1 and not isinstance(expr.parts[0], str):
        # HCL: a template that is one interpolation is that value, not its text ("${list}"
        # is the list); null stays "" by our rule above.
        value = _eval(expr.parts[0], scope)
        return "" if value is None else value
    out = []
    for part in expr.parts:
        out.append(part if isinstance(part, str) else to_text(_eval(part, scope), part.where))
    return "".join(out)


def _tuple(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.TupleExpr)
    return [_eval(item, scope) for item in expr.items]


def _object(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.ObjectExpr)
    out: dict[str, Value] = {}
    for item in expr.items:
        key = item.key
        if item.key_expr is not None:
            key = _key_text(_eval(item.key_expr, scope), item.key_expr.where)
        if key in out:
            raise PlanError(f'object key "{key}" is given twice', item.where)
        out[key] = _eval(item.value, scope)
    return out


def _key_text(value: Value, where: Location) -> str:
    if value is None or isinstance(value, list | dict):
        raise PlanError(f"an object key must be a string, got {type_name(value)}", where)
    return to_text(value, where)


def _variable(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.Variable)
    name = expr.name
    if name in scope.bound:
        return scope.bound[name]
    if name == "arch":
        return scope.locals.arch
    if name == "meta":
        return dict(scope.locals.meta)
    if name == "lldp":
        return dict(scope.locals.lldp)
    if name in ("local", "self"):
        raise PlanError(f"use {name}.<name>, not {name} on its own", expr.where)
    raise PlanError(unknown_root_message(name), expr.where)


def _traversal_root(expr: ex.Expr) -> ex.Expr:
    while isinstance(expr, ex.GetAttr | ex.Index):
        expr = expr.target
    return expr


def _step(expr: ex.Expr, scope: Scope) -> Value:
    """``x.name`` / ``x[key]``: local.* and self.* resolve by name; meta.* is lenient."""
    assert isinstance(expr, ex.GetAttr | ex.Index)
    target = expr.target
    key: Value = expr.name if isinstance(expr, ex.GetAttr) else _eval(expr.key, scope)
    if isinstance(target, ex.Variable) and target.name in scope.bound:
        pass
    elif isinstance(target, ex.Variable) and target.name in ("local", "self"):
        if not isinstance(key, str):
            raise PlanError(f"{target.name}[...] needs a name, got {type_name(key)}", expr.where)
        if target.name == "local":
            return scope.locals.get(key, target.where)
        if scope.self_value is None:
            raise PlanError(scope.self_reason, target.where)
        if key not in scope.self_value:
            raise PlanError(unknown_self_message(key), target.where)
        return scope.self_value[key]
    if isinstance(target, ex.Variable) and target.name == "lldp":
        facts = scope.locals.lldp
        if not isinstance(key, str) or key not in facts:
            raise PlanError(unknown_lldp_message(str(key), facts), target.where)
    base = _eval(target, scope)
    root = _traversal_root(expr)
    lenient = isinstance(root, ex.Variable) and root.name == "meta"
    return _lookup(base, key, expr.where, lenient=lenient)


def _lookup(base: Value, key: Value, where: Location, *, lenient: bool) -> Value:
    if base is None and lenient:
        return None
    if isinstance(base, dict):
        if isinstance(key, bool) or not isinstance(key, str | int | float):
            raise PlanError(f"an object key must be a string, got {type_name(key)}", where)
        name = to_text(key, where)
        if name in base:
            return base[name]
        if lenient:
            return None
        known = ", ".join(sorted(base)) or "it is empty"
        raise PlanError(f'object has no key "{name}"; keys: {known}', where)
    if isinstance(base, list):
        index = _as_index(key, where)
        if 0 <= index < len(base):
            return base[index]
        if lenient:
            return None
        raise PlanError(f"index {index} out of range for a list of {len(base)}", where)
    raise PlanError(f"cannot index into a {type_name(base)}", where)


def _as_index(key: Value, where: Location) -> int:
    index = _as_number(key, where, what="a list index")
    if isinstance(index, float) and not index.is_integer():
        raise PlanError(f"a list index must be a whole number, got {index}", where)
    return int(index)


def _as_number(value: Value, where: Location, *, what: str) -> int | float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value) and math.isfinite(float(value)):
        return number.from_text(value)
    raise PlanError(f"{what} must be a number, got {type_name(value)}", where)


def _as_bool(value: Value, where: Location, *, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false", "1", "0"):  # HCL (cty) converts these strings
        return value in ("true", "1")
    raise PlanError(f"{what} must be a bool, got {type_name(value)}", where)


def equal(a: Value, b: Value) -> bool:
    """HCL equality: values of different types are never equal (1 != "1", true != 1)."""
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


def _unary(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.Unary)
    value = _eval(expr.operand, scope)
    if expr.op == "!":
        return not _as_bool(value, expr.operand.where, what="the operand of !")
    return number.negate(_as_number(value, expr.operand.where, what="the operand of -"))


def _binary(expr: ex.Expr, scope: Scope) -> Value:
    assert isinstance(expr, ex.Binary)
    left, right = _eval(expr.left, scope), _eval(expr.right, scope)
    op = expr.op
    if op in ("==", "!="):
        return equal(left, right) == (op == "==")
    if op in ("&&", "||"):
        a = _as_bool(left, expr.left.where, what=f"the left side of {op}")
        b = _as_bool(right, expr.right.where, what=f"the right side of {op}")
        return (a and b) if op == "&&" else (a or b)
    x = _as_number(left, expr.left.where, what=f"the left side of {op}")
    y = _as_number(right, expr.right.where, what=f"the right side of {op}")
    if op in _COMPARE:
        return _COMPARE[op](x, y)
    return number.arithmetic(op, x, y, expr.where)


def _conditional(expr: ex.Expr, scope: Scope) -> Value:
    """As HCL: both results are evaluated, and their types must unify (list vs string fails).

    An error in the result not taken is ignored, as hclsyntax does (that result is then
    unknown and unifies with anything); ``plan validate`` still checks its references.
    """
    assert isinstance(expr, ex.Conditional)
    chosen = _as_bool(_eval(expr.condition, scope), expr.condition.where, what="a condition")
    taken, other = (expr.if_true, expr.if_false) if chosen else (expr.if_false, expr.if_true)
    value = _eval(taken, scope)
    try:
        other_value = _eval(other, scope)
    except PlanError:
        return value
    if_true, if_false = (value, other_value) if chosen else (other_value, value)
    kinds = {_kind(if_true), _kind(if_false)} - {"null"}
    if len(kinds) > 1 and (not kinds <= _PRIMITIVES or kinds == {"bool", "number"}):
        raise PlanError(
            f"the results of ? : must have the same type, got {type_name(if_true)} "
            f"({expr.if_true.where.line}:{expr.if_true.where.column}) and "
            f"{type_name(if_false)} ({expr.if_false.where.line}:{expr.if_false.where.column})",
            expr.where,
        )
    if len(kinds) > 1 and value is not None:  # string and another primitive: string (HCL)
        return to_text(value, expr.where)
    return value


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda x, y: x < y,
    ">": lambda x, y: x > y,
    "<=": lambda x, y: x <= y,
    ">=": lambda x, y: x >= y,
}
_PRIMITIVES = {"string", "number", "bool"}


def _kind(value: Value) -> str:
    return type_name(value)


_HANDLERS: dict[type, Callable[[ex.Expr, Scope], Value]] = {
    ex.Literal: _literal,
    ex.Template: _template,
    ex.TupleExpr: _tuple,
    ex.ObjectExpr: _object,
    ex.Variable: _variable,
    ex.GetAttr: _step,
    ex.Index: _step,
    ex.Unary: _unary,
    ex.Binary: _binary,
    ex.Conditional: _conditional,
    ex.Splat: splat,
    ex.ForExpr: for_expr,
    ex.TemplateIf: template_if,
    ex.TemplateFor: template_for,
}
