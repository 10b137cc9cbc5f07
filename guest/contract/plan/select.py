"""Target selection as upstream does it: by name, first arch-eligible variant wins."""

from __future__ import annotations

from guest.contract.errors import Location
from guest.contract.plan.errors import PlanError
from guest.contract.plan.model import EvaluatedPlan, Target


def select_target(evaluated: EvaluatedPlan, name: str | None) -> Target:
    """The target to boot: ``name``, else ``default_target``, else the only target.

    Among targets with that name (arch variants), the first whose arch is empty or equals
    the guest's wins. Errors read ``no target "X" for arch A``.
    """
    arch = evaluated.arch
    wanted = name or evaluated.default_target
    # A name from the guest's cmdline is not in the file; the default is.
    where = Location(evaluated.source)
    if not name:
        where = evaluated.default_where or Location(evaluated.source, 1, 1)
    if not wanted:
        if len(evaluated.targets) == 1:
            only = evaluated.targets[0]
            if only.eligible_on(arch):
                return only
            raise PlanError(
                f'the only target "{only.name}" is for arch {only.arch}, not {arch}', only.where
            )
        names = ", ".join(dict.fromkeys(t.name for t in evaluated.targets))
        raise PlanError(
            f"no target name given and the plan has no default_target; targets: {names}",
            where,
        )
    for target in evaluated.targets:
        if target.name == wanted and target.eligible_on(arch):
            return target
    eligible = ", ".join(dict.fromkeys(t.name for t in evaluated.eligible_targets())) or "none"
    raise PlanError(
        f'no target "{wanted}" for arch {arch}; targets for {arch}: {eligible}',
        where,
    )
