"""Differential properties of HCL's newline rule on generated expressions.

A generated expression is a list of tokens. The same tokens joined in other ways must
parse to the same tree when the newlines sit where HCL ignores them (inside ( ) and
[ ]), and must be rejected, at the place HCL reports, when a newline breaks the
expression at the top level: at the end of the line when the line ends in an operator
(the expression is incomplete), else at the first token of the next line (the argument
ended, and no argument starts with an operator).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from guest.contract.plan import PlanError
from guest.contract.plan.syntax import parse_document

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ATOMS = st.sampled_from(["x", "local.a", "1", "2.5", "true", "null", '"s"', '"${x}!"', "meta.a[0]"])
OPERATORS = ["||", "&&", "==", "!=", "<", ">=", "+", "-", "*", "/", "%"]


def expressions() -> st.SearchStrategy[list[str]]:
    def extend(inner: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
        binary = st.tuples(inner, st.sampled_from(OPERATORS), inner).map(
            lambda t: [*t[0], t[1], *t[2]]
        )
        conditional = st.tuples(inner, inner, inner).map(lambda t: [*t[0], "?", *t[1], ":", *t[2]])
        parens = inner.map(lambda t: ["(", *t, ")"])
        tuples = st.lists(inner, max_size=3).map(
            lambda items: ["[", *[tok for item in items for tok in [*item, ","]], "]"]
        )
        negation = ATOMS.map(lambda a: ["!", a])
        return st.one_of(binary, conditional, parens, tuples, negation)

    return st.recursive(ATOMS.map(lambda a: [a]), extend, max_leaves=8)


def shape(node: Any) -> Any:
    """The tree without positions."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = [f.name for f in dataclasses.fields(node) if f.name != "where"]
        return (type(node).__name__, *(shape(getattr(node, name)) for name in fields))
    if isinstance(node, tuple | list):
        return tuple(shape(n) for n in node)
    return node


def parse(tokens: list[str], seps: list[str]) -> Any:
    text = "a = " + "".join(t + s for t, s in zip(tokens, [*seps, ""], strict=False)) + "\n"
    return shape(parse_document(text, "p.hcl").attributes[0].value)


def depths(tokens: list[str]) -> list[int]:
    """Bracket depth after each token."""
    out, depth = [], 0
    for token in tokens:
        depth += token in ("(", "[")
        depth -= token in (")", "]")
        out.append(depth)
    return out


@SETTINGS
@given(expressions(), st.data())
def test_newlines_inside_brackets_change_nothing(tokens: list[str], data: st.DataObject) -> None:
    plain = parse(tokens, [" "] * (len(tokens) - 1))
    seps = [
        data.draw(st.sampled_from([" ", "\n", "  \n    ", " # note\n"])) if depth else " "
        for depth in depths(tokens)[:-1]
    ]
    assert parse(tokens, seps) == plain


ENDS_OPERAND = ("x", "local.a", "1", "2.5", "true", "null", '"s"', '"${x}!"', "meta.a[0]", ")", "]")


@SETTINGS
@given(expressions(), st.data())
def test_a_top_level_newline_is_rejected_where_hcl_rejects_it(
    tokens: list[str], data: st.DataObject
) -> None:
    cuts = [i for i, depth in enumerate(depths(tokens)[:-1]) if depth == 0]
    if not cuts:
        return
    cut = data.draw(st.sampled_from(cuts))
    first = "a = " + " ".join(tokens[: cut + 1])
    text = first + "\n" + " ".join(tokens[cut + 1 :]) + "\n"
    with pytest.raises(PlanError) as info:
        parse_document(text, "p.hcl")
    where = info.value.where
    level = depths(tokens)
    open_conditionals = sum(
        (t == "?") - (t == ":") for t, d in zip(tokens[: cut + 1], level, strict=False) if d == 0
    )
    if tokens[cut] in ENDS_OPERAND and not open_conditionals:
        # the argument ended there; the next line starts with an operator
        assert (where.line, where.column) == (2, 1), str(info.value)
    else:  # the line ends in an operator, ? or :, or a ? still waits for its :
        assert (where.line, where.column) == (1, len(first) + 1), str(info.value)
