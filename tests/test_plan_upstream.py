"""Forms only upstream's guest rejects: warnings with line and construct, errors on demand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest.contract.plan import evaluate, parse_plan, select_target
from guest.contract.plan.validate import check_plan
from publisher.plancheck import InvalidPlanError, check_plan as publisher_check, load_plan
from tests.test_plan_cli import cloudboot

DOCS_FORMS = """\
locals {
  base = "quiet"
  full = "${local.base} ro"
}
target "a" {
  index   = "r/a"
  modpack = "r/m"
  cmdline = "${local.full} ip=${meta.ip}"
}
target "b" {
  disk = { device = "/dev/vda", luks-passphrase = "x" }
}
target "c" {
  disk {
    device  = "/dev/${self.name}"
    dataset = "rpool"
  }
}
default_target = "a"
"""

EXPECTED = [
    (3, 13, "local.full using local.base"),
    (7, 3, "modpack"),
    (8, 33, "meta.ip (the meta.* scope)"),
    (11, 3, "disk = { ... } (disk as an attribute)"),
    (11, 33, '"luks-passphrase" in a disk'),
    (15, 23, "self.* inside a disk { } block"),
    (16, 5, '"dataset" in a disk'),
]

CLEAN = 'target "a" {\n  index   = "r/a"\n  modules = "r/m"\n}\n'


def test_every_docs_only_form_is_a_warning_with_line_and_construct() -> None:
    report = check_plan(DOCS_FORMS, "p.hcl")
    assert report.errors == []
    assert [(w.where.line, w.where.column, w.construct) for w in report.warnings] == EXPECTED
    assert all(w.message.startswith("upstream's guest rejects ") for w in report.warnings)


def test_upstream_mode_makes_them_errors() -> None:
    report = check_plan(DOCS_FORMS, "p.hcl", upstream=True)
    assert report.warnings == []
    assert [(e.where.line, e.where.column) for e in report.errors] == [e[:2] for e in EXPECTED]


def test_plain_upstream_plans_warn_nothing() -> None:
    assert check_plan(CLEAN, "p.hcl").warnings == []


def test_publisher_refuses_them_only_when_asked() -> None:
    publisher_check(DOCS_FORMS.encode(), Path("p.hcl"))
    with pytest.raises(InvalidPlanError) as info:
        publisher_check(DOCS_FORMS.encode(), Path("p.hcl"), upstream=True)
    assert len(info.value.errors) == len(EXPECTED)


def test_push_plan_refuses_them_when_asked(tmp_path: Path) -> None:
    """`cloudboot push plan` reads plans through load_plan; [publish] upstream reaches it."""
    plan = tmp_path / "p.hcl"
    plan.write_text(DOCS_FORMS)
    load_plan(plan)
    with pytest.raises(InvalidPlanError):
        load_plan(plan, upstream=True)


def test_cli_warns_and_upstream_flag_fails(tmp_path: Path) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text(DOCS_FORMS)
    proc = cloudboot("plan", "validate", plan, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == (
        f'{plan}:7:3: warning: upstream\'s guest rejects modpack: it reads only "modules"'
    )
    assert "7 upstream warning(s)" in proc.stderr
    strict = cloudboot("plan", "validate", "--upstream", plan, cwd=tmp_path)
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[1] == (
        f'{plan}:7:3: upstream\'s guest rejects modpack: it reads only "modules"'
    )


def test_cli_json_carries_errors_and_warnings(tmp_path: Path) -> None:
    plan = tmp_path / "p.hcl"
    plan.write_text(DOCS_FORMS.replace('index   = "r/a"', 'index   = "r/a" + 1'))
    proc = cloudboot("plan", "validate", "--json", plan, cwd=tmp_path)
    assert proc.returncode == 1
    (entry,) = json.loads(proc.stdout)["plans"]
    assert [e["line"] for e in entry["errors"]] == [6]
    assert [(w["line"], w["construct"]) for w in entry["warnings"]] == [
        (line, construct) for line, _, construct in EXPECTED
    ]


def test_publish_setting_turns_warnings_into_errors(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.hcl").write_text(DOCS_FORMS)
    (tmp_path / "cloudboot.toml").write_text("[publish]\nupstream = true\n")
    proc = cloudboot("plan", "validate", cwd=tmp_path)
    assert proc.returncode == 1
    assert "7 error(s)" in proc.stderr


def test_what_upstream_accepts_we_accept() -> None:
    """A later locals block replaces a name; an empty target name is a name."""
    text = (
        'locals {\n  a = "one"\n}\nlocals {\n  a = "two"\n}\n'
        'target "" {\n  index = "r/${local.a}"\n}\n'
    )
    assert check_plan(text, "p.hcl").errors == []
    target = select_target(evaluate(parse_plan(text, "p.hcl"), "amd64"), None)
    assert (target.name, target.to_json()["source"]["index"]) == ("", "r/two")


def test_a_local_twice_in_one_block_is_an_error() -> None:
    errors = check_plan('locals {\n  a = 1\n  a = 2\n}\ntarget "t" {\n  index = "r"\n}\n', "p.hcl")
    assert [str(e) for e in errors.errors] == ["p.hcl:3:3: local.a is defined twice (first at 2:3)"]
