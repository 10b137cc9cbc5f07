"""The quoted-template fast path (template.simple_template) builds what the full path builds.

Each case is parsed twice, once as shipped and once with the fast path turned off, and the
two trees must be equal, Locations included (every node compares its ``where``). Errors
must match too: where the fast path declines, the full path reports exactly what it did.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from guest.contract.plan import PlanError, template as template_module
from guest.contract.plan.syntax import parse_document, parse_expression
from tests.test_plan_properties import SETTINGS

CORPUS = Path(__file__).parent / "data" / "upstream-plans"
PLANS = sorted(Path(__file__).parent.parent.joinpath("plans").glob("*.hcl"))

CASES = [
    '"console=${local.console}"',
    '"${arch}"',
    '"${ arch }"',
    '"a${arch}b${self.name}c"',
    '"${a}${b}"',
    '"${local.a.b.c}"',
    '"${local.my-name}x"',
    '"${x-1}"',
    '"${true}"',
    '"${null}x"',
    '"${local.true}"',
    '"${for}"',
    '"${local.0}"',
    '"${local[0]}"',
    '"${ ~arch }"',
    '"${arch~}"',
    '"$${arch}"',
    '"$arch ${arch}"',
    '"100% ${arch}"',
    '"${arch}\\n"',
    '"${\tarch}"',
    '"${arch"',
    '"${arch}',
    '"${arch}\n"',
    '"${f(x)}"',
    '"${a.}"',
    '"${1}"',
    '"${ünï.cödé}"',
    '"${arch}" == "x"',
    '"${local.a}".b',
]


def both(text: str, parse: object, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    def run() -> object:
        try:
            return parse(text, "t.hcl")  # type: ignore[operator]
        except PlanError as exc:
            return ("error", str(exc.where), exc.message)

    fast = run()
    with monkeypatch.context() as patch:
        patch.setattr(template_module, "simple_template", lambda cur, open_at: None)
        full = run()
    return fast, full


@pytest.mark.parametrize("text", CASES)
def test_expression_cases(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, full = both(text, parse_expression, monkeypatch)
    assert fast == full


def test_fast_path_is_taken() -> None:
    """The common shapes do go the fast way (else this file tests nothing)."""
    calls: list[object] = []
    original = template_module.simple_template

    def spy(cur: object, open_at: int) -> object:
        got = original(cur, open_at)  # type: ignore[arg-type]
        calls.append(got)
        return got

    template_module.simple_template = spy  # type: ignore[assignment]
    try:
        parse_expression('"a${arch}b${self.name}"')
    finally:
        template_module.simple_template = original
    assert calls and calls[0] is not None


@pytest.mark.parametrize(
    "path", [*PLANS, *sorted(CORPUS.glob("*.hcl"))], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_plan_files(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, full = both(path.read_text(), parse_document, monkeypatch)
    assert fast == full


pieces = st.sampled_from(
    ["a", " ", "-", "$", "${", "}", ".", "x", "local", "arch", "true", "~", "%", "%{", '"',
     "\\n", "\\", "0", "(", "[", "]", "\t", "\n", "ü"]
)  # fmt: skip


@SETTINGS
@given(st.lists(pieces, max_size=16).map("".join))
def test_generated_strings(body: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, full = both(f'x = "{body}"\n', parse_document, monkeypatch)
    assert fast == full
