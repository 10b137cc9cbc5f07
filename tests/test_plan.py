"""Plan contract: parsing with positions, evaluation scopes, sources, and target selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guest.contract.errors import Location
from guest.contract.plan import (
    DiskSource,
    Lldp,
    OciSource,
    PlanError,
    SubplanSource,
    Target,
    evaluate,
    parse_plan,
    parse_timeout,
    select_target,
)
from tests.helpers import REPO

PLANS = REPO / "plans"


def render(text: str, arch: str = "amd64", meta: dict[str, Any] | None = None) -> dict[str, Target]:
    """name -> target of the plan evaluated for arch (first variant per name)."""
    evaluated = evaluate(parse_plan(text, "t.hcl"), arch, meta=meta)
    out: dict[str, Target] = {}
    for target in evaluated.targets:
        out.setdefault(target.name, target)
    return out


def cmdline_of(text: str, arch: str = "amd64") -> str:
    return select_target(evaluate(parse_plan(text, "t.hcl"), arch), None).cmdline


def test_console_conditional_follows_arch() -> None:
    plan = """
locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}
target "t" {
  index   = "reg.example/linux:6.6"
  cmdline = "console=${local.console} ro"
}
"""
    assert cmdline_of(plan, "arm64") == "console=ttyAMA0 ro"
    assert cmdline_of(plan, "amd64") == "console=ttyS0 ro"


def test_list_cmdline_joins_with_single_spaces_and_skips_null_and_empty() -> None:
    plan = """
target "t" {
  index   = "r/x:1"
  cmdline = ["a=1", null, "", "b", arch == "arm64" ? "c" : null]
}
"""
    assert cmdline_of(plan, "amd64") == "a=1 b"
    assert cmdline_of(plan, "arm64") == "a=1 b c"


def test_go_template_text_and_escapes_pass_through_untouched() -> None:
    plan = r"""
target "t" {
  index   = "r/x:1"
  cmdline = ["ip={{.IPSpec}}", "{{if .DHCP}}dhcp{{end}}", "lit=$${not.hcl}", "q=\"x\"", "p=100%"]
}
"""
    assert cmdline_of(plan) == 'ip={{.IPSpec}} {{if .DHCP}}dhcp{{end}} lit=${not.hcl} q="x" p=100%'


def test_self_locals_in_any_order_and_label_default() -> None:
    plan = """
target "primary" {
  version = "6.6"
  label   = "Linux ${self.version} (${self.name})"
  index   = "${local.registry}/linux:${self.version}"
}
target "other" {
  index = "${local.registry}/other"
}
locals {
  registry = local.host
}
locals {
  host = "harbor.example.com/boot"
}
"""
    targets = render(plan)
    primary = targets["primary"]
    assert primary.label == "Linux 6.6 (primary)"
    assert primary.source == OciSource(index="harbor.example.com/boot/linux:6.6")
    assert targets["other"].label == "other"


def test_both_disk_forms_give_the_same_source() -> None:
    plan = """
default_target = "a"
target "a" {
  disk {
    device = "LABEL=cbtarget"
    fs     = "xfs"
  }
}
target "b" {
  disk = { device = "LABEL=cbtarget", "fs": "xfs" }
}
"""
    targets = render(plan)
    assert targets["a"].source == targets["b"].source == DiskSource("LABEL=cbtarget", "xfs")


def test_disk_defaults_to_ext4_and_keeps_passphrase_out_of_repr_and_json() -> None:
    plan = """
target "z" {
  disk = {
    device          = "/dev/vda3"
    fs              = "zfs"
    dataset         = "rpool/ROOT/pve-1"
    luks-passphrase = meta.cloudboot.luks_passphrase
  }
}
target "e" {
  disk { device = "/dev/vda1" }
}
"""
    meta = {"cloudboot": {"luks_passphrase": "hunter2"}}
    targets = render(plan, meta=meta)
    zfs = targets["z"]
    assert isinstance(zfs.source, DiskSource)
    assert zfs.source.luks_passphrase == "hunter2"
    assert zfs.source.dataset == "rpool/ROOT/pve-1"
    assert "hunter2" not in repr(zfs) and "hunter2" not in str(zfs.to_json())
    assert zfs.source.to_json()["luks_passphrase"] == "<redacted>"
    assert targets["e"].source == DiskSource("/dev/vda1", "ext4")
    # On the host nothing is known about meta: the missing key is null, i.e. unset.
    assert render(plan)["z"].source == DiskSource("/dev/vda3", "zfs", dataset="rpool/ROOT/pve-1")


def test_oci_refs_modpack_alias_and_subplan() -> None:
    plan = """
default_target = "k"
target "k" {
  kernel  = "r/kernel:1"
  initrd  = "r/initrd:1"
  modpack = "r/mods:1"
}
target "chain" {
  subplan = "oci://r/plans/lab:latest"
}
"""
    targets = render(plan)
    assert targets["k"].source == OciSource(None, "r/kernel:1", "r/initrd:1", "r/mods:1")
    assert targets["chain"].source == SubplanSource("oci://r/plans/lab:latest")


def test_lldp_and_meta_scopes() -> None:
    plan = """
default_target = lldp.available && lldp.system_name == "lab-sw1" ? "lab" : "prod"
target "prod" {
  index = "r/prod"
}
target "lab" {
  index   = "r/lab"
  cmdline = "port=${lldp.port_id} site=${meta.site} n=${meta.racks[1]} idx=${meta.racks.0}"
}
"""
    host = evaluate(parse_plan(plan, "t.hcl"), "amd64")
    assert host.default_target == "prod"
    lldp = Lldp(available=True, system_name="lab-sw1", port_id="Eth1/7")
    meta = {"site": "fra", "racks": [12, 14]}
    guest = evaluate(parse_plan(plan, "t.hcl"), "arm64", lldp=lldp, meta=meta)
    assert guest.default_target == "lab"
    assert select_target(guest, None).cmdline == "port=Eth1/7 site=fra n=14 idx=12"


def test_comparisons_logic_and_types() -> None:
    plan = """
locals {
  n     = 3
  list  = ["a", "b"]
  obj   = { k = "v", "x y" = true }
}
target "t" {
  index   = "r/x"
  cmdline = [
    local.n > 2 ? "gt" : "le",
    local.n <= 3 && !(local.n == 4) ? "ok" : "no",
    1 == "1" ? "loose" : "strict",
    local.list[1],
    local.obj["x y"] ? local.obj.k : "",
    "${local.n} ${1.5} ${true}",
    -local.n < 0 || false ? "neg" : "pos",
  ]
}
"""
    assert cmdline_of(plan) == "gt ok strict b v 3 1.5 true neg"


def test_positions_are_kept_for_targets() -> None:
    plan = parse_plan((PLANS / "oci.hcl").read_text(), "plans/oci.hcl")
    text_lines = (PLANS / "oci.hcl").read_text().splitlines()
    for target in plan.targets:
        line = text_lines[target.where.line - 1]
        assert line.startswith(f'target "{target.name}"'), (target.where, line)
        assert target.where.column == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("", None), ("0", None), ("-5", None), ("5", 5.0), ("3s", 3.0), ("1m30s", 90.0),
     ("1.5h", 5400.0), ("250ms", 0.25), ("+2s", 2.0), ("1h0m0.5s", 3600.5)],
)  # fmt: skip
def test_menu_timeout_go_durations(text: str, seconds: float | None) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["5 sec", "s", "1.5", ".s", "5d", "1m 2s", "--1s"])
def test_menu_timeout_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timeout(text)


def test_menu_block_and_number_timeout() -> None:
    plan = 'menu {\n  timeout = 10\n}\ntarget "t" {\n  index = "r"\n}\n'
    menu = evaluate(parse_plan(plan, "t.hcl"), "amd64").menu
    assert menu is not None and menu.timeout_s == 10.0 and menu.prompt == "Select a boot target:"
    no_timeout = evaluate(parse_plan('menu {}\ntarget "t" {\n  index = "r"\n}\n', "t"), "amd64")
    assert no_timeout.menu is not None and no_timeout.menu.timeout_s is None


# -- selection ---------------------------------------------------------------------------

VARIANTS = """
default_target = "rescue"
target "rescue" {
  arch   = "arm64"
  kernel = "r/rescue:arm64"
}
target "rescue" {
  kernel = "r/rescue:generic"
}
target "x86-only" {
  arch   = "amd64"
  kernel = "r/x86"
}
"""


def test_selection_first_eligible_variant_wins() -> None:
    plan = parse_plan(VARIANTS, "v.hcl")
    arm = select_target(evaluate(plan, "arm64"), None)
    amd = select_target(evaluate(plan, "amd64"), "")
    assert arm.source == OciSource(kernel="r/rescue:arm64")
    assert amd.source == OciSource(kernel="r/rescue:generic")
    assert select_target(evaluate(plan, "amd64"), "x86-only").name == "x86-only"
    assert [t.name for t in evaluate(plan, "arm64").eligible_targets()] == ["rescue", "rescue"]


def test_selection_error_names_target_and_arch() -> None:
    plan = parse_plan(VARIANTS, "v.hcl")
    with pytest.raises(PlanError) as err:
        select_target(evaluate(plan, "arm64"), "x86-only")
    assert err.value.message.startswith('no target "x86-only" for arch arm64')
    assert err.value.where == Location("v.hcl")


def test_only_target_without_default_is_chosen() -> None:
    plan = parse_plan('target "solo" {\n  arch = "amd64"\n  index = "r"\n}\n', "s.hcl")
    assert select_target(evaluate(plan, "amd64"), None).name == "solo"
    with pytest.raises(PlanError, match='only target "solo" is for arch amd64, not arm64'):
        select_target(evaluate(plan, "arm64"), None)


def test_evaluate_raises_first_error_with_location() -> None:
    plan = parse_plan('target "t" {\n  index = "r"\n  label = local.nope\n}\n', "e.hcl")
    with pytest.raises(PlanError) as err:
        evaluate(plan, "amd64")
    assert str(err.value) == "e.hcl:3:11: local.nope is not defined; locals: none are defined"


def test_evaluate_accepts_other_arch_spellings() -> None:
    plan = parse_plan('target "t" {\n  index = "r/${arch}"\n}\n', "a.hcl")
    assert select_target(evaluate(plan, "aarch64"), None).source == OciSource(index="r/arm64")
    with pytest.raises(PlanError, match='unknown arch "sparc"'):
        evaluate(plan, "sparc")


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.hcl")), ids=lambda p: p.name)
def test_example_plans_evaluate_for_both_arches(path: Path) -> None:
    plan = parse_plan(path.read_text(), str(path))
    for arch in ("amd64", "arm64"):
        target = select_target(evaluate(plan, arch), None)
        assert target.name


def test_default_plan_is_the_demo_contract() -> None:
    """plans/default.hcl is what the demo workspace and the end-to-end test rely on."""
    text = (PLANS / "default.hcl").read_text()
    plan = parse_plan(text, "plans/default.hcl")
    for arch, console in (("amd64", "console=ttyS0"), ("arm64", "console=ttyAMA0")):
        evaluated = evaluate(plan, arch)
        assert evaluated.default_target == "alpha"
        assert evaluated.menu is None  # a live reload boots the new default at once
        names = [t.name for t in evaluated.eligible_targets()]
        assert names == ["alpha", "beta"]
        for target in evaluated.targets:
            assert target.source == DiskSource("LABEL=cbtarget", "ext4")
            assert console in target.cmdline.split()
    # The end-to-end test flips the default by editing this one line.
    assert text.count('default_target = "alpha"') == 1
    flipped = parse_plan(text.replace('default_target = "alpha"', 'default_target = "beta"'), "d")
    assert select_target(evaluate(flipped, "amd64"), None).name == "beta"
