"""The HCL expressions that loop or compute: splats, ``for``, template directives, arithmetic.

Kept apart from evaluator.py (which dispatches to them) so each module stays small; the
rules are HCL's (docs/plan-language.md §3): a splat over null is an empty list and over a
non-list value is that value in a one-element list; ``for`` over an object iterates its
keys in lexical order; an object ``for`` without ``...`` fails on a duplicate key;
template ``for`` concatenates its body's text. Arithmetic is number.py's.
"""

from __future__ import annotations

from guest.contract.errors import Location
from guest.contract.plan import evaluator as ev, expr as ex
from guest.contract.plan.errors import PlanError
from guest.contract.plan.expr import Value

#: A bound on what loops may build (elements), so a hostile plan cannot exhaust memory.
MAX_ITEMS = 100_000


def _pairs(value: Value, where: Location) -> list[tuple[Value, Value]]:
    if isinstance(value, list):
        return list(enumerate(value))  # type: ignore[arg-type]
    if isinstance(value, dict):
        return [(k, value[k]) for k in sorted(value)]
    raise PlanError(f"for can iterate over a list or an object, not a {ev.type_name(value)}", where)


def _bindings(key_var: str | None, value_var: str, key: Value, value: Value) -> dict[str, Value]:
    return {value_var: value} if key_var is None else {key_var: key, value_var: value}


def splat(expr: ex.Expr, scope: ev.Scope) -> Value:
    assert isinstance(expr, ex.Splat)
    source = ev._eval(expr.source, scope)
    if source is None:
        return []
    items = source if isinstance(source, list) else [source]
    return [ev._eval(expr.each, scope.bind({ex.SPLAT_ITEM: item})) for item in items]


def for_expr(expr: ex.Expr, scope: ev.Scope) -> Value:
    assert isinstance(expr, ex.ForExpr)
    pairs = _pairs(ev._eval(expr.collection, scope), expr.collection.where)
    results: list[Value] = []
    grouped: dict[str, Value] = {}
    for key, value in pairs:
        inner = scope.bind(_bindings(expr.key_var, expr.value_var, key, value))
        if expr.condition is not None:
            keep = ev._eval(expr.condition, inner)
            if not ev._as_bool(keep, expr.condition.where, what="a for's if condition"):
                continue
        item = ev._eval(expr.value, inner)
        if expr.key is None:
            results.append(item)
            continue
        name = ev._eval(expr.key, inner)
        if name is None or isinstance(name, list | dict):
            what = f"a for's key must be a string, got {ev.type_name(name)}"
            raise PlanError(what, expr.key.where)
        text = ev.to_text(name, expr.key.where)
        if expr.grouping:
            group = grouped.setdefault(text, [])
            assert isinstance(group, list)
            group.append(item)
        elif text in grouped:
            raise PlanError(
                f'two items produce the key "{text}"; add ... after the value to group them',
                expr.key.where,
            )
        else:
            grouped[text] = item
    if expr.key is None:
        return results
    return grouped


def template_if(expr: ex.Expr, scope: ev.Scope) -> Value:
    assert isinstance(expr, ex.TemplateIf)
    condition = ev._eval(expr.condition, scope)
    chosen = ev._as_bool(condition, expr.condition.where, what="a %{if} condition")
    branch = expr.if_true if chosen else expr.if_false
    return ev.to_text(ev._eval(branch, scope), branch.where)


def template_for(expr: ex.Expr, scope: ev.Scope) -> Value:
    assert isinstance(expr, ex.TemplateFor)
    out = []
    for key, value in _pairs(ev._eval(expr.collection, scope), expr.collection.where):
        inner = scope.bind(_bindings(expr.key_var, expr.value_var, key, value))
        out.append(ev.to_text(ev._eval(expr.body, inner), expr.body.where))
    return "".join(out)
