"""Evaluate a parsed :class:`Plan` for one arch into typed targets (upstream's decode rules).

Per target, as upstream does it: ``arch`` and ``version`` first (they may use ``local.*``
and ``arch`` but not ``self``), then ``self = {name, arch, version}`` for every other
attribute. ``label`` defaults to the name; ``cmdline`` may be a list of strings joined by
single spaces with null/empty items skipped; an OCI ref or subplan that evaluates to ""
counts as unset. Every target is evaluated whatever its arch, as upstream decodes them
all before choosing.

Attributes upstream decodes as plain strings (default_target, arch, version, disk
fields, menu, dns) get HCL's conversion (numbers and bools become text); attributes
upstream evaluates as expressions (label, refs, subplan, cmdline) must be strings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from guest.contract.arch import PLAN_ARCHES, Arch
from guest.contract.errors import Location
from guest.contract.plan.errors import PlanError
from guest.contract.plan.evaluator import (
    SELF_IN_SCALARS,
    Locals,
    Scope,
    evaluate as evaluate_expr,
    to_text,
    type_name,
)
from guest.contract.plan.expr import Value
from guest.contract.plan.model import (
    DEFAULT_MENU_PROMPT,
    DEVICE_PREFIXES,
    DISK_FILESYSTEMS,
    OCI_KEYS,
    DiskDecl,
    DiskSource,
    EvaluatedPlan,
    Lldp,
    Menu,
    MenuDecl,
    OciSource,
    Plan,
    Source,
    SubplanSource,
    Target,
    TargetDecl,
)
from guest.contract.plan.syntax import Attribute

_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_BARE_SECONDS = re.compile(r"[-+]?[0-9]+")


def parse_timeout(text: str) -> float | None:
    """Menu timeout: bare seconds or a Go duration ("1m30s"); ""/zero/negative: wait forever.

    Raises ValueError for anything else (the caller adds the position).
    """
    text = text.strip()
    if not text:
        return None
    if _BARE_SECONDS.fullmatch(text):
        seconds = float(int(text))
    else:
        sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
        if body == "0":
            return None
        seconds, pos = 0.0, 0
        for match in _GO_DURATION_PART.finditer(body):
            number = match.group(1)
            if match.start() != pos or not any(c.isdigit() for c in number):
                raise ValueError(text)
            seconds += float(number) * _GO_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(body) or not body:
            raise ValueError(text)
        seconds *= sign
    return seconds if seconds > 0 else None


def plan_arch(arch: str, source: str) -> str:
    """Accept plan names (amd64/arm64/riscv64) and the other spellings Arch knows."""
    if arch in PLAN_ARCHES:
        return arch
    try:
        return Arch.parse(arch).oci
    except ValueError:
        raise PlanError(
            f'unknown arch "{arch}"; expected one of: {", ".join(PLAN_ARCHES)}', Location(source)
        ) from None


class _Resolver:
    """Evaluates one plan for one arch, collecting every error instead of stopping."""

    def __init__(self, plan: Plan, arch: str, meta: Mapping[str, Any], lldp: Lldp) -> None:
        self.plan = plan
        self.arch = arch
        self.errors: list[PlanError] = []
        exprs = {name: attr.value for name, attr in plan.locals.items()}
        self.locals = Locals(exprs, arch, dict(meta), lldp.as_value())
        self.top = Scope(self.locals)

    def value(self, attr: Attribute | None, scope: Scope) -> Value:
        if attr is None:
            return None
        try:
            return evaluate_expr(attr.value, scope)
        except PlanError as exc:
            self.errors.append(exc)
            return None

    def text(self, attr: Attribute | None, scope: Scope, *, convert: bool) -> str | None:
        """A string-valued attribute; null -> None. ``convert``: numbers/bools become text."""
        value = self.value(attr, scope)
        if value is None or isinstance(value, str):
            return value
        assert attr is not None
        if convert and isinstance(value, bool | int | float):
            return to_text(value, attr.where)
        self.errors.append(
            PlanError(f"{attr.name} must be a string, got {type_name(value)}", attr.value.where)
        )
        return None

    def run(self) -> EvaluatedPlan:
        default = self.text(self.plan.default_target, self.top, convert=True) or ""
        return EvaluatedPlan(
            source=self.plan.source,
            arch=self.arch,
            default_target=default,
            menu=self.menu(self.plan.menu),
            dns=self.dns(self.plan.dns),
            targets=tuple(self.target(t) for t in self.plan.targets),
            default_where=self.plan.default_target.value.where
            if self.plan.default_target is not None
            else None,
        )

    def menu(self, decl: MenuDecl | None) -> Menu | None:
        if decl is None:
            return None
        timeout_attr = decl.attributes.get("timeout")
        timeout_text = self.text(timeout_attr, self.top, convert=True) or ""
        timeout: float | None = None
        try:
            timeout = parse_timeout(timeout_text)
        except ValueError:
            assert timeout_attr is not None
            self.errors.append(
                PlanError(
                    f'menu timeout "{timeout_text}" is neither seconds nor a Go duration'
                    ' like "5s" or "1m30s"',
                    timeout_attr.value.where,
                )
            )
        prompt = self.text(decl.attributes.get("prompt"), self.top, convert=True)
        return Menu(timeout_s=timeout, prompt=prompt or DEFAULT_MENU_PROMPT)

    def dns(self, attr: Attribute | None) -> tuple[str, ...]:
        value = self.value(attr, self.top)
        if value is None:
            return ()
        assert attr is not None
        if not isinstance(value, list):
            self.errors.append(PlanError("dns must be a list of IP addresses", attr.value.where))
            return ()
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_address(item if isinstance(item, str) else "")))
            except ValueError:
                shown = item if isinstance(item, str) else type_name(item)
                self.errors.append(
                    PlanError(f'dns entry "{shown}" is not an IP address', attr.value.where)
                )
        return tuple(out)

    def target(self, decl: TargetDecl) -> Target:
        attrs = decl.attributes
        scalar_scope = Scope(
            self.locals,
            self_value=None,
            self_reason=SELF_IN_SCALARS,
        )
        arch = self.text(attrs.get("arch"), scalar_scope, convert=True) or ""
        if arch and arch not in PLAN_ARCHES:
            self.errors.append(
                PlanError(
                    f'target "{decl.name}": arch "{arch}" is not valid; expected one of: '
                    f"{', '.join(PLAN_ARCHES)} (or leave it out for any arch)",
                    attrs["arch"].value.where,
                )
            )
        version = self.text(attrs.get("version"), scalar_scope, convert=True) or ""
        scope = Scope(self.locals, self_value={"name": decl.name, "arch": arch, "version": version})
        label = self.text(attrs.get("label"), scope, convert=False) or decl.name
        return Target(
            name=decl.name,
            label=label,
            arch=arch,
            version=version,
            cmdline=self.cmdline(attrs.get("cmdline"), scope),
            source=self.source(decl, scope),
            where=decl.where,
        )

    def cmdline(self, attr: Attribute | None, scope: Scope) -> str:
        value = self.value(attr, scope)
        if value is None or isinstance(value, str):
            return value or ""
        assert attr is not None
        if not isinstance(value, list):
            self.errors.append(
                PlanError(
                    f"cmdline must be a string or a list of strings, got {type_name(value)}",
                    attr.value.where,
                )
            )
            return ""
        parts = []
        for item in value:
            if item is None or item == "":
                continue
            if not isinstance(item, str):
                self.errors.append(
                    PlanError(
                        f"cmdline list items must be strings, got {type_name(item)}",
                        attr.value.where,
                    )
                )
                continue
            parts.append(item)
        return " ".join(parts)

    def source(self, decl: TargetDecl, scope: Scope) -> Source:
        errors_before = len(self.errors)
        refs = {
            key: self.text(decl.attributes.get(key), scope, convert=False) or None
            for key in OCI_KEYS
        }
        subplan = self.text(decl.attributes.get("subplan"), scope, convert=False) or None
        disk = self.disk(decl, decl.disk, scope) if decl.disk is not None else None
        kinds = [
            kind
            for kind, present in (
                ("an OCI ref", any(refs.values())),
                ("a disk", disk),
                ("subplan", subplan),
            )
            if present
        ]
        # An attribute that failed to evaluate was already reported; counting it as unset
        # would only add a misleading "sets none".
        if len(kinds) != 1 and len(self.errors) == errors_before:
            sets = "none" if not kinds else " and ".join(kinds)
            self.errors.append(
                PlanError(
                    f'target "{decl.name}" must set exactly one source: an OCI ref '
                    f"(index/kernel/initrd/modules), a disk, or subplan; it sets {sets}",
                    decl.where,
                )
            )
        if disk is not None and not any(refs.values()) and subplan is None:
            return disk
        if subplan is not None and not any(refs.values()):
            return SubplanSource(subplan)
        return OciSource(**refs)

    def disk(self, decl: TargetDecl, disk: DiskDecl, scope: Scope) -> DiskSource:
        # Paths and device names: a number is a typo (kernel = 42), never coerced to "42".
        values = {key: self.text(attr, scope, convert=False) for key, attr in disk.fields.items()}
        fs = values.get("fs") or "ext4"
        if fs not in DISK_FILESYSTEMS:
            self.errors.append(
                PlanError(
                    f'target "{decl.name}": disk fs "{fs}" is not supported; expected one of: '
                    f"{', '.join(DISK_FILESYSTEMS)}",
                    disk.fields["fs"].value.where,
                )
            )
        device = values.get("device") or ""
        if "device" in disk.fields and fs != "zfs" and not device.startswith(DEVICE_PREFIXES):
            self.errors.append(
                PlanError(
                    f'target "{decl.name}": disk device "{device}" should be /dev/..., LABEL=, '
                    'UUID=, PARTLABEL= or PARTUUID= (or a dataset with fs = "zfs")',
                    disk.fields["device"].value.where,
                )
            )
        return DiskSource(
            device=device,
            fs=fs,
            kernel=values.get("kernel") or None,
            initrd=values.get("initrd") or None,
            dataset=values.get("dataset") or None,
            luks_passphrase=values.get("luks-passphrase") or None,
        )


def evaluate_collecting(
    plan: Plan, arch: str, *, meta: Mapping[str, Any] | None = None, lldp: Lldp | None = None
) -> tuple[EvaluatedPlan, list[PlanError]]:
    """The evaluated plan and every error met (values that failed are left empty)."""
    resolver = _Resolver(plan, plan_arch(arch, plan.source), meta or {}, lldp or Lldp())
    evaluated = resolver.run()
    return evaluated, resolver.errors


def evaluate(
    plan: Plan, arch: str, *, meta: Mapping[str, Any] | None = None, lldp: Lldp | None = None
) -> EvaluatedPlan:
    """Evaluate ``plan`` for ``arch`` (the guest passes real meta/lldp; the host none).

    Raises the first PlanError (in source order) if any attribute fails to evaluate.
    """
    evaluated, errors = evaluate_collecting(plan, arch, meta=meta, lldp=lldp)
    if errors:
        raise min(errors, key=PlanError.sort_key)
    return evaluated
