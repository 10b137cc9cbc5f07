"""Plans from upstream's README, docs, examples and code comments, with upstream's verdict.

tests/data/upstream-plans/ holds each example as found (uki's long comments shortened) and
verdicts.json what upstream's decoder (cloud-boot/init internal/plan, hclsyntax + gohcl)
does with it: ``accepts`` with the values it decodes per arch (LLDP unavailable),
``rejects`` with the line of the first error it meets, or ``fragment`` (decoded, but
without a target to pick unless told: no target, or several and no default_target, which
we refuse by our rule of docs/wire-formats.md §1.5; only its syntax is compared). The
verdicts come from hclsyntax itself (tests/test_plan_oracle.py checks every one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guest.contract.plan import evaluate_collecting, parse_plan
from guest.contract.plan.syntax import parse_document
from guest.contract.plan.validate import check_plan

CORPUS = Path(__file__).parent / "data" / "upstream-plans"
VERDICTS: dict[str, dict[str, Any]] = json.loads((CORPUS / "verdicts.json").read_text())
#: Where our first error differs from upstream's and why (both reject).
OURS_FIRST = {
    # upstream evaluates locals first and trips over meta.* (line 2); we refuse the
    # function call at parse time, before any evaluation
    "docs--reference-metadata-url-2.hcl": 6,
}


def test_every_file_has_a_verdict() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.hcl")) == sorted(VERDICTS)
    assert len(VERDICTS) >= 20


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_corpus_matches_upstream(name: str) -> None:
    text = (CORPUS / name).read_text()
    verdict = VERDICTS[name]
    if verdict["upstream"] == "fragment":
        parse_document(text, name)  # the syntax is fine; only our validation is stricter
        return
    strict = check_plan(text, name, upstream=True)
    if verdict["upstream"] == "rejects":
        assert strict.errors, "upstream rejects this plan; --upstream must too"
        assert strict.errors[0].where.line == OURS_FIRST.get(name, verdict["line"])
        return
    assert strict.errors == [], [str(e) for e in strict.errors]
    plan = parse_plan(text, name)
    for arch, expected in verdict["rendering"].items():
        evaluated, errors = evaluate_collecting(plan, arch)
        assert errors == []
        got = {}
        for target in evaluated.targets:
            doc = target.to_json()
            source = {k: v for k, v in doc["source"].items() if v is not None and k != "kind"}
            source.pop("dataset", None)
            source.pop("luks_passphrase", None)
            got[target.name] = {"cmdline": doc["cmdline"], **source}
            if target.arch:
                got[target.name]["arch"] = target.arch
        assert got == expected


def test_docs_only_forms_are_accepted_with_warnings_by_default() -> None:
    """Our guest boots them, so without --upstream they validate, each with a warning."""
    for name, verdict in VERDICTS.items():
        if verdict["upstream"] != "rejects" or name in OURS_FIRST or name.startswith("init--"):
            continue
        report = check_plan((CORPUS / name).read_text(), name)
        assert report.errors == [], name
        assert report.warnings[0].where.line == verdict["line"], name
