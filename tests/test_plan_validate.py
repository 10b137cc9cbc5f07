"""Validation: one broken plan per rule, each asserting the exact location and message.

The docs/wire-formats.md §1.5 rules: default_target names a target (or there is exactly one);
every target has exactly one source kind, a known fs and a valid arch; local.* and
self.* references resolve and self.* stays in its target; errors name file:line:col.
Checked for amd64 and arm64. Syntax errors are reported the same way.
"""

from __future__ import annotations

import pytest

from guest.contract.plan import PlanError, parse_plan, validate_plan
from tests.helpers import REPO

SOURCE_RULE = (
    "must set exactly one source: an OCI ref (index/kernel/initrd/modules), a disk, or subplan"
)

CASES: dict[str, tuple[str, list[str]]] = {
    "default_target undefined": (
        """\
default_target = "primry"

target "primary" {
  index = "r/linux:6.6"
}

target "rescue" {
  kernel = "r/rescue:1"
}
""",
        ['1:18: default_target "primry" is not defined; targets: primary, rescue'],
    ),
    "default_target missing with two targets": (
        'target "a" {\n  index = "r/a"\n}\ntarget "b" {\n  index = "r/b"\n}\n',
        ["1:1: default_target is not set and the plan has 2 targets; set default_target to one "
         "of: a, b"],
    ),
    "no source": (
        'target "a" {\n  cmdline = "console=ttyS0"\n}\n',
        [f'1:1: target "a" {SOURCE_RULE}; it sets none'],
    ),
    "oci and disk": (
        'target "a" {\n  index = "r/a"\n  disk {\n    device = "/dev/vda1"\n  }\n}\n',
        [f'1:1: target "a" {SOURCE_RULE}; it sets an OCI ref and a disk'],
    ),
    "disk and subplan": (
        'target "a" {\n  subplan = "r/p"\n  disk = { device = "/dev/vda1" }\n}\n',
        [f'1:1: target "a" {SOURCE_RULE}; it sets a disk and subplan'],
    ),
    "source only on one arch": (
        'target "a" {\n  index = arch == "arm64" ? "r/a" : ""\n}\n',
        [f'1:1: target "a" {SOURCE_RULE}; it sets none (arch amd64)'],
    ),
    "unknown fs": (
        'target "a" {\n  disk {\n    device = "/dev/vda1"\n    fs     = "ntfs"\n  }\n}\n',
        ['4:14: target "a": disk fs "ntfs" is not supported; expected one of: ext4, xfs, btrfs, '
         "zfs"],
    ),
    "bad device": (
        'target "a" {\n  disk = { device = "vda1" }\n}\n',
        ['2:21: target "a": disk device "vda1" should be /dev/..., LABEL=, UUID=, PARTLABEL= or '
         'PARTUUID= (or a dataset with fs = "zfs")'],
    ),
    "disk without device": (
        'target "a" {\n  disk {\n    fs = "xfs"\n  }\n}\n',
        ['2:3: the disk in target "a" needs a device'],
    ),
    "disk twice": (
        'target "a" {\n  disk = { device = "/dev/vda1" }\n  disk {\n    device = "/dev/vda2"\n'
        "  }\n}\n",
        ['3:3: disk is given twice in target "a" (first at 2:3)'],
    ),
    "invalid arch": (
        'target "a" {\n  arch  = "x86"\n  index = "r/a"\n}\n',
        ['2:11: target "a": arch "x86" is not valid; expected one of: amd64, arm64, riscv64 '
         "(or leave it out for any arch)"],
    ),
    "undefined local": (
        'locals {\n  registry = "r"\n}\ntarget "a" {\n  index = "${local.registy}/a"\n}\n',
        ["5:14: local.registy is not defined; locals: registry"],
    ),
    "undefined local in the branch the host does not take": (
        'target "a" {\n  index = arch == "riscv64" ? local.nope : "r/a"\n}\n',
        ["2:31: local.nope is not defined; locals: none are defined"],
    ),
    "self in locals": (
        'locals {\n  v = self.version\n}\ntarget "a" {\n  index = "r/a:${local.v}"\n}\n',
        ["2:7: locals cannot use self.*"],
    ),
    "self at top level": (
        'default_target = self.name\ntarget "a" {\n  index = "r/a"\n}\n',
        ["1:18: self.* is only available inside a target block"],
    ),
    "self inside version": (
        'target "a" {\n  version = "${self.name}-1"\n  index   = "r/a"\n}\n',
        ["2:16: self.* cannot be used inside arch or version (self is built from them)"],
    ),
    "self field that does not exist": (
        'target "a" {\n  index = "r/a:${self.label}"\n}\n',
        ["2:18: self.label is not available; self has: name, arch, version"],
    ),
    "unknown variable": (
        'target "a" {\n  index   = "r/a"\n  cmdline = "x=${var.x}"\n}\n',
        ['3:18: unknown variable "var"; plans can use arch, local.*, self.*, meta.*, lldp.*'],
    ),
    "unknown lldp fact in an untaken branch": (
        'target "a" {\n  index = lldp.available ? "r/${lldp.switch}" : "r/a"\n}\n',
        ["2:33: lldp.switch is not an LLDP fact; lldp has: available, chassis_id, port_id, "
         "system_name, system_desc, port_desc, mgmt_addr"],
    ),
    "locals cycle": (
        'locals {\n  a = local.b\n  b = "${local.a}"\n}\ntarget "a" {\n  index = local.a\n}\n',
        ["3:10: local.a refers to itself (a -> b -> a)"],
    ),
    "default only for amd64": (
        'default_target = "x86"\ntarget "x86" {\n  arch  = "amd64"\n  index = "r/a"\n}\n'
        'target "any" {\n  index = "r/b"\n}\n',
        ['1:18: no target "x86" for arch arm64 (it exists for: amd64)'],
    ),
    # a plan that reads arch is evaluated per arch; one that does not, once (the same values)
    "wrong type only where arch says so": (
        'locals {\n  l = { a = "r/a" }\n}\n'
        'target "a" {\n  index = arch == "arm64" ? local.l.b : local.l.a\n}\n',
        ['5:36: object has no key "b"; keys: a (arch arm64)'],
    ),
    "syntax error": (
        'target "a" {\n  index   = "r/a"\n  cmdline = [\n}\n',
        ["4:1: HCL syntax error: unexpected '}'; expected an expression"],
    ),
    "syntax error: missing value": (
        'target "a" {\n  index =\n}\n',
        ["2:10: HCL syntax error: unexpected end of line; expected an expression"],
    ),
    "unknown attribute": (
        'target "a" {\n  index  = "r/a"\n  kernal = "r/k"\n}\n',
        ['3:3: unknown attribute "kernal" in target "a"; did you mean "kernel"? (expected one '
         "of: arch, cmdline, disk, index, initrd, kernel, label, modpack, modules, subplan, "
         "version)"],
    ),
    "attribute twice": (
        'target "a" {\n  index = "r/a"\n  index = "r/b"\n}\n',
        ['3:3: "index" is set twice in target "a" (first at 2:3)'],
    ),
    "modpack and modules": (
        'target "a" {\n  modules = "r/m"\n  modpack = "r/m"\n}\n',
        ['3:3: "modules" and "modpack" are the same; set one in target "a" (first at 2:3)'],
    ),
    "bad menu timeout": (
        'menu {\n  timeout = "5 sec"\n}\ntarget "a" {\n  index = "r/a"\n}\n',
        ['2:13: menu timeout "5 sec" is neither seconds nor a Go duration like "5s" or "1m30s"'],
    ),
    "cmdline of the wrong type": (
        'target "a" {\n  index   = "r/a"\n  cmdline = ["a", 1]\n}\n',
        ["3:13: cmdline list items must be strings, got number"],
    ),
    "label of the wrong type": (
        'target "a" {\n  index = "r/a"\n  label = ["x"]\n}\n',
        ["3:11: label must be a string, got list"],
    ),
    "dns entry": (
        'dns = ["10.0.2.3", "dns.example"]\ntarget "a" {\n  index = "r/a"\n}\n',
        ['1:7: dns entry "dns.example" is not an IP address'],
    ),
    "function call": (
        'target "a" {\n  index = lower("R/A")\n}\n',
        ["2:11: function calls are not supported in plans (lower(...)); upstream's guest has "
         "no functions either"],
    ),
    "arithmetic on a string": (
        'target "a" {\n  index   = "r/a"\n  version = "x" + 1\n}\n',
        ["3:13: the left side of + must be a number, got string"],
    ),
    "heredoc never closed": (
        'target "a" {\n  index   = "r/a"\n  cmdline = <<EOF\nro\n}\n',
        ["6:1: heredoc <<EOF opened at 3:13 is never closed by a EOF line"],
    ),
    "template directive never closed": (
        'target "a" {\n  index   = "r/a"\n  cmdline = "%{if true}ro"\n}\n',
        ["3:14: %{if} is never closed by %{endif}"],
    ),
    "conditional broken after ?": (
        'target "a" {\n  index = arch == "amd64" ?\n    "r/a" : "r/b"\n}\n',
        ["2:28: HCL syntax error: unexpected end of line; expected an expression (an "
         "expression continues on the next line only inside ( ) or [ ])"],
    ),
    "conditional broken before ?": (
        'target "a" {\n  index = arch == "amd64"\n    ? "r/a" : "r/b"\n}\n',
        ["3:5: HCL syntax error: unexpected '?'; expected an argument (name = value) or a "
         "block"],
    ),
    "operator at the end of a line": (
        'target "a" {\n  index = "r/a"\n  label = arch == "amd64" &&\n    true ? "x" : "y"\n}\n',
        ["3:29: HCL syntax error: unexpected end of line; expected an expression (an "
         "expression continues on the next line only inside ( ) or [ ])"],
    ),
    "quoted string over two lines": (
        'target "a" {\n  index   = "r/a"\n  cmdline = "ro\nquiet"\n}\n',
        ["3:16: a quoted string cannot span lines; write \\n for a newline, or use a heredoc "
         "(<<EOT ... EOT) for text over several lines"],
    ),
    "argument on the { line": (
        'target "a" { index = "r/a"\n  label = "x"\n}\n',
        ["1:27: a block with an argument on its { line must end with } on that same line; "
         "put the argument on its own line after {"],
    ),
    "two arguments on one line": (
        'target "a" {\n  index = "r/a" label = "x"\n}\n',
        ["2:17: HCL syntax error: unexpected name 'label'; expected a newline after this "
         "argument (each argument and block goes on its own line)"],
    ),
    "conditional results of different types": (
        'target "a" {\n  index   = "r/a"\n  cmdline = arch == "amd64" ? ["ro"] : "rw"\n}\n',
        ["3:13: the results of ? : must have the same type, got list (3:31) and string "
         "(3:40)"],
    ),
    "no targets": ("# nothing here\n", ['1:1: the plan defines no targets; add a target "name" '
                                       "{ ... } block"]),
    "target without a name": (
        "target {\n  index = \"r/a\"\n}\n",
        ['1:1: a target block needs exactly one name: target "name" { ... }'],
    ),
}  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES.values(), ids=CASES.keys())
def test_each_rule_names_file_line_col(text: str, expected: list[str]) -> None:
    errors = validate_plan(text, "plans/prod.hcl")
    assert [str(e) for e in errors] == [f"plans/prod.hcl:{line}" for line in expected]
    assert all(isinstance(e, PlanError) and e.where.path == "plans/prod.hcl" for e in errors)


def test_every_error_is_reported_not_just_the_first() -> None:
    text = """\
default_target = "nope"
target "a" {
  arch  = "sparc"
  index = "${local.x}"
}
target "b" {
  disk {
    device = "/dev/vda1"
    fs = "fat"
  }
}
"""
    messages = [f"{e.where.line}:{e.where.column}" for e in validate_plan(text, "p.hcl")]
    assert messages == ["1:18", "3:11", "4:14", "9:10"]


def test_syntax_errors_raise_plan_error_from_parse_plan() -> None:
    with pytest.raises(PlanError) as err:
        parse_plan('target "a" {\n  index = "unterminated\n}\n', "x.hcl")
    assert err.value.where.path == "x.hcl" and err.value.where.line >= 2


UPSTREAM_STYLE = """\
# Real-world style: written for upstream cloud-boot-init, not for this tool.
default_target = lldp.available ? "rack" : "primary"

dns = ["1.1.1.1", "2606:4700:4700::1111"]

menu {
  timeout = "1m30s"
  prompt  = "Pick one"
}

locals {
  registry = "_oci._tcp.registry.example.com/boot"
  console  = arch == "arm64" ? "ttyAMA0" : "ttyS0" # locals see arch
  base     = "console=${local.console} ro"
}

target "primary" {
  version = "6.6"
  label   = "Production Linux ${self.version}"
  index   = "${local.registry}/linux:${self.version}"
  cmdline = "${local.base} root=/dev/vda1"
}

// the same name twice: arch variants
target "rescue" {
  arch    = "amd64"
  kernel  = "${local.registry}/rescue:latest"
  cmdline = [
    "${local.base}",
    "single",
    "rd.break",
  ]
}
target "rescue" {
  arch   = "arm64"
  kernel = "${local.registry}/rescue-arm:latest"
}

target "rack" {
  label   = "Rack ${lldp.system_name} port ${lldp.port_id}"
  subplan = "oci://reg.example/plans/${lldp.chassis_id == "" ? "any" : lldp.chassis_id}:prod"
}

target "alma" {
  arch  = "amd64"
  label = "AlmaLinux 9 on XFS"
  disk {
    device = "/dev/vda2"
    fs     = "xfs"
    kernel = "/boot/vmlinuz-5.14.0-503.el9_5.x86_64"
  }
  cmdline = ["console=ttyS0", "ip={{.IPSpec}}", "ro"]
}

target "pve" {
  disk = {
    device          = "/dev/vda3"
    fs              = "zfs"
    dataset         = "rpool/ROOT/pve-1"
    luks-passphrase = "${meta.cloudboot.luks_passphrase}"
  }
  cmdline = "root=ZFS=rpool/ROOT/pve-1 boot=zfs"
}
"""


def test_upstream_style_plan_is_accepted() -> None:
    assert validate_plan(UPSTREAM_STYLE, "upstream.hcl") == []


def test_crlf_tabs_and_byte_order_mark_are_accepted_with_right_columns() -> None:
    text = '\ufefftarget "a" {\r\n\tindex = "r/a"\r\n\tlabel = local.q\r\n}\r\n'
    assert [str(e) for e in validate_plan(text, "w.hcl")] == [
        "w.hcl:3:10: local.q is not defined; locals: none are defined"
    ]


@pytest.mark.parametrize("path", sorted((REPO / "plans").glob("*.hcl")), ids=lambda p: p.name)
def test_example_plans_are_valid(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    assert validate_plan(path.read_text(), str(path)) == []


def test_errors_are_sorted_and_deduplicated_across_arches() -> None:
    text = 'target "a" {\n  index = "${local.x}"\n  label = local.x\n}\n'
    errors = [str(e) for e in validate_plan(text, "d.hcl")]
    assert errors == [
        "d.hcl:2:14: local.x is not defined; locals: none are defined",
        "d.hcl:3:11: local.x is not defined; locals: none are defined",
    ]
