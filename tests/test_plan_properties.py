"""Property tests: no input crashes the parser or the evaluator; every failure is a PlanError.

Strategies go from raw text, to HCL-shaped token soup, to well-formed expressions over
the plan language, to single-character mutations of the real example plans.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from guest.contract.plan import Lldp, PlanError, evaluate, parse_plan, select_target, validate_plan
from guest.contract.plan.evaluator import Locals, Scope, evaluate as evaluate_expr
from guest.contract.plan.syntax import parse_expression
from tests.helpers import REPO

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXAMPLES = {p.name: p.read_text() for p in sorted((REPO / "plans").glob("*.hcl"))}


def assert_located(errors: list[PlanError], text: str) -> None:
    lines = text.count("\n") + 2
    for error in errors:
        assert isinstance(error, PlanError)
        assert error.where.path == "fuzz.hcl"
        assert 1 <= error.where.line <= lines, error
        assert error.where.column >= 1, error
        assert error.message


def check_text(text: str) -> None:
    """validate_plan never raises; parse + evaluate + select raise only PlanError."""
    assert_located(validate_plan(text, "fuzz.hcl"), text)
    try:
        plan = parse_plan(text, "fuzz.hcl")
        for arch in ("amd64", "arm64"):
            json.dumps(select_target(evaluate(plan, arch), None).to_json())
    except PlanError as exc:
        assert_located([exc], text)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check_text(text)


TOKENS = [
    'target "a"', 'target "b"', "target", "locals", "menu", "disk", "default_target", "dns",
    "index", "kernel", "cmdline", "arch", "version", "label", "subplan", "fs", "device",
    " = ", "{", "}", "\n", '"', '"a"', '"${', "${", "}", "$${", "%{", "{{.IPSpec}}", "local.",
    "self.", "meta.", "lldp.", "available", "name", "x", "[", "]", ",", "(", ")", "?", ":",
    "==", "!=", "<", ">=", "&&", "||", "!", "-", "1", "1.5", "true", "null", "#", "//", "/*",
    "*/", "\\", '"amd64"', '"arm64"', '"/dev/vda1"', '"zfs"', "[0]", ".0", "<<EOF\n", "EOF\n",
]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_hcl_shaped_token_soup(text: str) -> None:
    check_text(text)


@SETTINGS
@given(
    st.sampled_from(sorted(EXAMPLES)),
    st.integers(min_value=0),
    st.sampled_from(["", "\n", "}", "{", '"', "=", "$", "${", "x", "[", "?", "#"]),
    st.integers(min_value=0, max_value=3),
)
def test_mutated_example_plans(name: str, at: int, insert: str, delete: int) -> None:
    text = EXAMPLES[name]
    pos = at % (len(text) + 1)
    check_text(text[:pos] + insert + text[pos + delete :])


# -- well-formed expressions -------------------------------------------------------------

LOCALS = {"s": '"str"', "n": "2", "b": "true", "l": '["a", "b"]', "o": '{ k = "v" }'}

atoms = st.sampled_from(
    ['"a"', '"arm64"', '""', "1", "2.5", "-3", "true", "false", "null", "arch",
     "local.s", "local.n", "local.b", "local.l", "local.o", "local.o.k", "local.l[0]",
     "local.l[5]", "local.missing", "self.name", "self.version", "self.nope", "meta.a.b",
     "meta.list[1]", "lldp.available", "lldp.port_id", "lldp.nope", "unknown", '"{{.X}}"',
     '"${arch}-${local.n}"', "[]", "{}", "local", "meta", "local.l.1"]
)  # fmt: skip


def combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = ["==", "!=", "<", ">", "<=", ">=", "&&", "||"]
    return st.one_of(
        st.tuples(children, st.sampled_from(ops), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        st.tuples(st.sampled_from(["!", "-"]), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        children.map(lambda c: f'"x${{{c}}}y"'),
        st.tuples(children, children).map(lambda t: f"{t[0]}[{t[1]}]"),
        children.map(lambda c: f"{{ key = {c} }}.key"),
    )


expressions = st.recursive(atoms, combine, max_leaves=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(
    expressions,
    st.sampled_from(["amd64", "arm64"]),
    st.dictionaries(st.sampled_from(["a", "list", "x"]), json_values, max_size=3),
    st.booleans(),
)
def test_expressions_evaluate_or_fail_cleanly(
    source: str, arch: str, meta: dict[str, Any], lldp_up: bool
) -> None:
    expr = parse_expression(source)
    locals_exprs = {name: parse_expression(text) for name, text in LOCALS.items()}
    lldp = Lldp(available=lldp_up, port_id="Eth1" if lldp_up else "")
    table = Locals(locals_exprs, arch, meta, lldp.as_value())
    scope = Scope(table, self_value={"name": "t", "arch": "", "version": "1"})
    try:
        first = evaluate_expr(expr, scope)
    except PlanError as exc:
        assert exc.where.path == "<expression>" and exc.where.line == 1
        return
    json.dumps(first)  # a plain JSON-able value
    assert evaluate_expr(expr, scope) == first  # deterministic (locals are cached)


def hcl_quote(text: str) -> str:
    """Our own quoting: what a user writes to get ``text`` literally."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + out.replace("${", "$${").replace("%{", "%%{") + '"'


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40))
def test_quoted_strings_round_trip(text: str) -> None:
    """Any text, quoted, evaluates back to itself: Go templates and escapes survive."""
    try:
        expr = parse_expression(hcl_quote(text))
    except PlanError:
        # The grammar cannot express every string (e.g. "$${" not closed by "}"); it must
        # say so cleanly, and only for text containing the escape sequences.
        assert "${" in text or "%{" in text or "\r" in text
        return
    table = Locals({}, "amd64", {}, Lldp().as_value())
    assert evaluate_expr(expr, Scope(table)) == text
