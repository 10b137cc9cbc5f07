"""HCL native syntax as upstream's parser reads it: newline rules, templates, expressions.

Every rejected case names its exact line:column; every accepted one is evaluated and its
value compared with what HCL gives (values worked out from HCL's specification).
"""

from __future__ import annotations

import pytest

from guest.contract.plan import PlanError
from guest.contract.plan.evaluator import Locals, Scope, evaluate
from guest.contract.plan.expr import Value
from guest.contract.plan.syntax import parse_document, parse_expression

META: dict[str, Value] = {"a": [1, 2, 3], "o": {"y": {"n": 2}, "x": {"n": 1}}, "s": "t"}


def value(text: str) -> Value:
    return evaluate(parse_expression(text), Scope(Locals({}, "amd64", META, {})))


def document(text: str) -> dict[str, Value]:
    body = parse_document(text, "p.hcl")
    scope = Scope(Locals({}, "amd64", META, {}))
    return {a.name: evaluate(a.value, scope) for a in body.attributes}


REJECTED = {
    "? at the end of a line": ('a = arch == "x" ?\n  1 : 2\n', "1:18", "end of line"),
    "? at the start of a line": ('a = arch == "x"\n  ? 1 : 2\n', "2:3", "unexpected '?'"),
    ": at the start of a line": ('a = arch == "x" ? 1\n  : 2\n', "1:20", "unexpected end of line"),
    "&& at the end of a line": ("a = true &&\n  false\n", "1:12", "end of line"),
    "|| at the start of a line": ("a = true\n  || false\n", "2:3", "unexpected '||'"),
    "+ at the end of a line": ("a = 1 +\n  2\n", "1:8", "end of line"),
    "newline inside an object item's value": (
        "a = { b = true ?\n 1 : 2 }\n",
        "1:17",
        "end of line",
    ),
    "quoted string over two lines": ('a = "x\ny"\n', "1:7", "cannot span lines"),
    "newline in a ${} string's text": ('a = "${1}\n"\n', "1:10", "cannot span lines"),
    "argument on the { line, more after": ("b { a = 1\n  c = 2\n}\n", "1:10", "same line"),
    "block on a one-line block": ("b { c {} }\n", "1:5", "only one argument"),
    "two arguments in a one-line block": ("b { a = 1, c = 2 }\n", "1:10", "same line"),
    "two arguments on one line": ("a = 1 b = 2\n", "1:7", "expected a newline"),
    "argument after a block's }": ("b {\n}c = 1\n", "2:2", "expected a newline"),
    "block header over two lines": ('b "x"\n{\n}\n', "1:6", "expected = or a block's {"),
    "object items without separator": ("a = {\n x = 1 y = 2 }\n", "2:8", "comma or a newline"),
    "list items without comma": ("a = [1 2]\n", "1:8", "expected , or ]"),
    "function call": ('a = upper("x")\n', "1:5", "function calls are not supported"),
    "unclosed string": ('a = "abc', "1:5", "never closed"),
    "unclosed heredoc": ("a = <<EOT\nx\n", "3:1", "opened at 1:5 is never closed"),
    "bad escape": ('a = "\\q"\n', "1:6", "invalid escape"),
    "endif without if": ('a = "%{endif}"\n', "1:6", "without a matching"),
    "if without endif": ('a = "%{if true}x"\n', "1:6", "never closed"),
    "unclosed comment": ("a = 1 /* x\n", "1:7", "never closed"),
    "different result types": ('a = true ? ["x"] : "y"\n', "1:5", "same type"),
    "tuple for with =>": ("a = [for x in [1]: x => x]\n", "1:22", "expected ]"),
    "a name that starts no argument (at the name, as hclsyntax)": (
        "a = x-\n  y.z\n",
        "2:3",
        "expected = or a block's {",
    ),  # x- is one name
    "zero divided by zero": ('a = "${0 / 0}"\n', "1:8", "no value"),
    "infinity minus infinity": ("a = 1 / 0 - 2 / 0\n", "1:5", "no value"),
    "modulo with an infinity": ("a = 5 % (1 / 0)\n", "1:5", "no value"),
}


@pytest.mark.parametrize(("text", "where", "words"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected_where_hcl_rejects(text: str, where: str, words: str) -> None:
    with pytest.raises(PlanError) as info:
        document(text)
    assert str(info.value).startswith(f"p.hcl:{where}: "), str(info.value)
    assert words in info.value.message


ACCEPTED: dict[str, tuple[str, Value]] = {
    "precedence": ("1 + 2 * 3 - 4 / 2", 5),
    "division gives a fraction only when it must": ("7 / 2", 3.5),
    "modulo takes the dividend's sign": ("-7 % 3", -1),
    "logic": ("!false && (true || false)", True),
    "comparison chain": ("1 < 2 == true", True),
    "negation binds to a term": ("-1 + 3", 2),
    "double negation (hclsyntax's parser, not its spec)": ("!!true == - -1 < 0", False),
    "for over a list": ("[for x in meta.a : x * 10 if x != 2]", [10, 30]),
    "for over a list with index": ('[for i, x in meta.a : "${i}=${x}"]', ["0=1", "1=2", "2=3"]),
    "for over an object, keys sorted": ("[for k, v in meta.o : k]", ["x", "y"]),
    "object for": ("{for k, v in meta.o : k => v.n}", {"x": 1, "y": 2}),
    "object for grouping": ('{for x in meta.a : (x > 1 ? "big" : "small") => x...}',
                            {"small": [1], "big": [2, 3]}),
    "splat": ("[meta.o.x, meta.o.y][*].n", [1, 2]),
    "attribute splat": ("[meta.o.x, meta.o.y].*.n", [1, 2]),
    "splat over null": ("meta.none[*]", []),
    "splat over a single value": ("meta.s[*]", ["t"]),
    "legacy index": ("meta.a.1", 2),
    "index": ('meta.o["x"].n', 1),
    "strip markers": ('"a ${~ "b" ~} c"', "abc"),
    "if directive": ('"%{ if arch == "amd64" }x86%{ else }arm%{ endif }"', "x86"),
    "for directive with strip": ('"%{ for x in meta.a ~} ${x} %{~ endfor }"', "123"),
    "escapes of ${ and %{": ('"$${x} %%{y} $ %"', "${x} %{y} $ %"),
    "unicode escapes": ('"\\u00e9\\U0001F600\\t"', "\u00e9\U0001f600\t"),
    "single interpolation keeps the type": ('"${meta.a}"', [1, 2, 3]),
    "objects with every key form": ('{ a = 1, "b" = 2, (arch) = 3, c : 4 }',
                                    {"a": 1, "b": 2, "amd64": 3, "c": 4}),
    "mixed primitive results unify to string": ('true ? 1 : "x"', "1"),
    "null unifies with anything": ("false ? [1] : null", None),
    "newlines inside parentheses": ('(arch == "amd64"\n  ? "a"\n  : "b")', "a"),
    "newlines inside a list": ("[\n  1,\n  2,\n]", [1, 2]),
    "newlines inside an index": ("meta.a[\n 0\n]", 1),
    "go template text passes through": ('"ip={{.IPSpec}}"', "ip={{.IPSpec}}"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_native_expressions_evaluate_as_hcl(text: str, expected: Value) -> None:
    assert value(text) == expected


def test_heredocs_keep_text_and_flush_indentation() -> None:
    text = (
        "a = <<EOT\n  one \\n\n  ${arch}\nEOT\n"
        "b = <<-EOT\n    one\n      two\n    ${arch}\n    EOT\n"
        "c = <<EOT\nEOT\n"
    )
    assert document(text) == {
        "a": "  one \\n\n  amd64\n",
        "b": "one\n  two\namd64\n",
        "c": "",
    }


def test_comments_and_one_line_blocks() -> None:
    body = parse_document(
        '# top\nb { a = 1 }  // same line\nc {}\nd "l" {\n  /* x */ e = 2 # end\n}\n', "p.hcl"
    )
    assert [(b.type, b.labels, [a.name for a in b.body.attributes]) for b in body.blocks] == [
        ("b", (), ["a"]),
        ("c", (), []),
        ("d", ("l",), ["e"]),
    ]


# Numbers at the edges render as hclsyntax renders them (cty's signed zero and infinities;
# each pair below was checked with the Go oracle, tests/oracle/main.go).
NUMBER_TEXT = {
    "-0": "-0", "0 * -1": "-0", "0 / -1": "-0", "-0 + 0": "0", "-0 - 0": "-0",
    "0 - -0": "0", "-0 % 5": "-0", "-5 % 5": "0", "2.5 / 0": "+Inf", "-2.5 / 0": "-Inf",
    "1 / -0": "-Inf", "1 % 0": "1", "-2.5 % 0": "-2.5", "0 % 0": "0", "-7.5 % 2": "-1.5",
    "7 % -3": "1", "1 / 10000000": "0.0000001", '"-0" + 0': "0", '"-0" - 0': "-0",
    "-1 / 0 < 0": "true",
}  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), NUMBER_TEXT.items(), ids=NUMBER_TEXT.keys())
def test_number_edges_render_as_hcl(text: str, expected: str) -> None:
    assert value(f'"x${{{text}}}"') == f"x{expected}"


@pytest.mark.parametrize(
    ("text", "node", "detail"),
    [
        ('("a"\n+ "b")', "Binary", "+"),  # inside ( ) the next line continues the string
        ('("a"\n? "b" : "c")', "Conditional", None),
        ('"a" == "b"', "Binary", "=="),
        ('"a" /* c */ == "b"', "Binary", "=="),
        ('"a".x', "GetAttr", "x"),
        ('"a"[0]', "Index", None),
        ('"a" # c', "Literal", "a"),
    ],
)
def test_a_plain_string_is_whole_only_when_nothing_continues_it(
    text: str, node: str, detail: str | None
) -> None:
    """The parser reads a quoted string that is the whole expression without its operator
    chain (syntax.py plain_string); whatever may continue it must still be parsed."""
    expr = parse_expression(text)
    assert type(expr).__name__ == node
    got = getattr(expr, "op", None) or getattr(expr, "name", None) or getattr(expr, "value", None)
    assert detail is None or got == detail


def test_plain_strings_keep_their_positions() -> None:
    body = parse_document('x = "a" # c\ny = [\n  "b", # c\n  "c"\n]\nz = { k = "v" }\n', "f")
    x, y, z = (a.value for a in body.attributes)
    assert (x.value, str(x.where)) == ("a", "f:1:5")  # type: ignore[union-attr]
    b, c = y.items  # type: ignore[union-attr]
    assert (b.value, str(b.where), c.value, str(c.where)) == ("b", "f:3:3", "c", "f:4:3")
    (item,) = z.items  # type: ignore[union-attr]
    assert (item.value.value, str(item.value.where)) == ("v", "f:6:11")
