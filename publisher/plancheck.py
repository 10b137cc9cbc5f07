"""A plan file checked for publishing: decoded and validated once, whoever publishes it.

``cloudboot push``, ``cloudboot publish``, mirrors and the watcher all go through
:func:`check_plan` / :func:`load_plan`, and publishing (``publisher.push``) takes only the
:class:`CheckedPlan` they return, so nothing unchecked reaches a registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guest.contract.errors import CloudbootError
from guest.contract.plan import PlanError, plan_text
from guest.contract.plan.validate import check_plan as plan_check
from publisher.inputs import MAX_PLAN_BYTES, read_input


class InvalidPlanError(CloudbootError):
    """A plan that fails validation; ``errors`` holds every problem (file:line:col each)."""

    def __init__(self, errors: Sequence[PlanError]) -> None:
        self.errors = list(errors)
        lines = "\n  ".join(str(e) for e in self.errors)
        count = len(self.errors)
        super().__init__(f"invalid plan, nothing published ({count} error(s)):\n  {lines}")


@dataclass(frozen=True)
class CheckedPlan:
    """Plan bytes that decoded and validated for every bootable arch: what gets published.

    Publishing takes only this type, so a plan is validated exactly once on its way out,
    whoever publishes it (``cloudboot push``, ``cloudboot publish``, the watcher).
    """

    path: Path
    data: bytes
    #: The tags its targets name, when already known for these bytes (``publisher.fleet``
    #: remembers them by content); None: derived from the text when publishing.
    pin_refs: tuple[str, ...] | None = None


def check_plan(data: bytes, plan_path: Path, *, upstream: bool = False) -> CheckedPlan:
    """Decode and validate plan bytes read from ``plan_path``; InvalidPlanError if bad.

    ``upstream`` (``[publish] upstream``) also refuses forms upstream's guest rejects."""
    source = str(plan_path)
    try:
        errors = plan_check(plan_text(data, source), source, upstream=upstream).errors
    except PlanError as exc:  # not UTF-8: located at the bad byte
        errors = [exc]
    if errors:
        raise InvalidPlanError(errors)
    return CheckedPlan(plan_path, data)


def load_plan(plan_path: Path, *, upstream: bool = False) -> CheckedPlan:
    """Read (a regular file or ``-``, at most ``MAX_PLAN_BYTES``; errors name it) and check."""
    data = read_input(plan_path, limit=MAX_PLAN_BYTES, what="plan")
    return check_plan(data, plan_path, upstream=upstream)
