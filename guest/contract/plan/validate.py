"""Host-side validation: the checks upstream runs at boot, for every arch we can boot.

docs/wire-formats.md §1.5: ``default_target`` names a defined target (or there is
exactly one target); every target has exactly one source kind, a known ``fs`` and a
valid ``arch``; every ``local.*``/``self.*`` reference resolves and ``self.*`` stays in
its own target. References are checked statically over *all* branches of every
conditional (so a typo in the arm64 branch is caught when validating on amd64 too), and
the plan is then evaluated for amd64 and for arm64. An error that only happens on one
arch says so: ``... (arch arm64)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from guest.contract.arch import BOOTABLE_PLAN_ARCHES
from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.decode import decode
from guest.contract.plan.errors import PlanError
from guest.contract.plan.evaluator import (
    ROOTS,
    SELF_FIELDS,
    SELF_IN_LOCALS,
    SELF_IN_SCALARS,
    SELF_OUTSIDE_TARGET,
    unknown_lldp_message,
    unknown_local_message,
    unknown_root_message,
    unknown_self_message,
)
from guest.contract.plan.model import EvaluatedPlan, Lldp, Plan
from guest.contract.plan.resolve import evaluate_collecting
from guest.contract.plan.syntax import Body, parse_document
from guest.contract.plan.upstream import UpstreamWarning, upstream_warnings

_SELF_UNAVAILABLE = {
    "top": SELF_OUTSIDE_TARGET,
    "locals": SELF_IN_LOCALS,
    "target-scalar": SELF_IN_SCALARS,
}

_LLDP_FACTS = Lldp().as_value()


def parse_plan(text: str, source: str) -> Plan:
    """Parse plan text; raises the first syntax or structure PlanError (in source order)."""
    plan, errors = decode(parse_document(text, source), source)
    if errors:
        raise min(errors, key=PlanError.sort_key)
    return plan


def memo_references() -> ex.FindReferences:
    """``ex.references`` remembered per node for one check (the reference checks and the
    upstream checks read the same expressions; nodes live as long as the check)."""
    memo: dict[int, list[ex.Reference]] = {}

    def references(expr: ex.Expr) -> list[ex.Reference]:
        found = memo.get(id(expr))
        if found is None:
            found = memo[id(expr)] = ex.references(expr)
        return found

    return references


def check_references(plan: Plan, references: ex.FindReferences = ex.references) -> list[PlanError]:
    """Unknown roots, undefined locals, and self.* outside its target, in every branch."""
    errors = []
    for expr, context in plan.expressions():
        for ref in references(expr):
            message = None
            if ref.root not in ROOTS:
                message = unknown_root_message(ref.root)
            elif ref.root == "local" and ref.name is not None and ref.name not in plan.locals:
                message = unknown_local_message(ref.name, plan.locals)
            elif ref.root == "lldp" and ref.name is not None and ref.name not in _LLDP_FACTS:
                message = unknown_lldp_message(ref.name, _LLDP_FACTS)
            elif ref.root == "self" and context in _SELF_UNAVAILABLE:
                message = _SELF_UNAVAILABLE[context]
            elif ref.root == "self" and ref.name is not None and ref.name not in SELF_FIELDS:
                message = unknown_self_message(ref.name)
            if message:
                errors.append(PlanError(message, ref.where))
    return errors


def check_selection(plan: Plan, evaluated: EvaluatedPlan) -> list[PlanError]:
    """default_target must name a target, and one this arch can boot when it boots any."""
    if not evaluated.targets:
        return []
    names = list(dict.fromkeys(t.name for t in evaluated.targets))
    default = evaluated.default_target
    attr = plan.default_target
    where = attr.value.where if attr is not None else Location(plan.source, 1, 1)
    if not default:
        if len(evaluated.targets) > 1:
            return [
                PlanError(
                    f"default_target is not set and the plan has {len(evaluated.targets)} targets;"
                    f" set default_target to one of: {', '.join(names)}",
                    where,
                )
            ]
        default = names[0]
    if default not in names:
        return [
            PlanError(
                f'default_target "{default}" is not defined; targets: {", ".join(names)}', where
            )
        ]
    arch = evaluated.arch
    if evaluated.eligible_targets() and not any(
        t.name == default and t.eligible_on(arch) for t in evaluated.targets
    ):
        variants = ", ".join(t.arch for t in evaluated.targets if t.name == default)
        return [
            PlanError(f'no target "{default}" for arch {arch} (it exists for: {variants})', where)
        ]
    return []


def _key(error: PlanError) -> tuple[str, str]:
    return (str(error.where), error.message)


@dataclass(frozen=True)
class Report:
    """A plan's errors and its upstream warnings (forms only upstream's guest rejects)."""

    errors: list[PlanError]
    warnings: list[UpstreamWarning]


def check_plan(text: str, source: str, *, upstream: bool = False) -> Report:
    """Errors and upstream warnings in one parse; ``upstream`` makes the warnings errors."""
    try:
        body = parse_document(text, source)
    except PlanError as exc:
        return Report([exc], [])
    references = memo_references()
    errors = _validate_body(body, source, references)
    warnings = upstream_warnings(body, references)
    if upstream:
        return Report(sorted([*errors, *warnings], key=PlanError.sort_key), [])
    return Report(errors, warnings)


def validate_plan(text: str, source: str) -> list[PlanError]:
    """Every problem in a plan, in source order; an empty list means it is valid."""
    return check_plan(text, source).errors


def uses_arch(plan: Plan, references: ex.FindReferences = ex.references) -> bool:
    """Whether any expression reads the ``arch`` variable, the only way the arch being
    evaluated for reaches a value (docs/plan-language.md §3); a for-variable named arch
    is bound, not a reference."""
    return any(r.root == "arch" for e, _ in plan.expressions() for r in references(e))


def _validate_body(body: Body, source: str, references: ex.FindReferences) -> list[PlanError]:
    plan, errors = decode(body, source)
    errors += check_references(plan, references)
    seen = {_key(e) for e in errors}
    per_arch: dict[tuple[str, str], tuple[PlanError, list[str]]] = {}
    once = None if uses_arch(plan, references) else evaluate_collecting(plan, "amd64")
    for arch in BOOTABLE_PLAN_ARCHES:
        if once is None:
            evaluated, arch_errors = evaluate_collecting(plan, arch)
        else:  # the same values for every arch: only the arch that selects differs
            evaluated, arch_errors = replace(once[0], arch=arch), once[1]
        for error in arch_errors + check_selection(plan, evaluated):
            key = _key(error)
            if key not in seen:
                per_arch.setdefault(key, (error, []))[1].append(arch)
    for error, arches in per_arch.values():
        arches = list(dict.fromkeys(arches))
        if len(arches) == len(BOOTABLE_PLAN_ARCHES) or f"for arch {arches[0]}" in error.message:
            errors.append(error)
        else:
            errors.append(error.with_suffix(f" (arch {', '.join(arches)})"))
    unique = {_key(e): e for e in errors}
    return sorted(unique.values(), key=PlanError.sort_key)
