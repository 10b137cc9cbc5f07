"""The plan contract: parse, evaluate, validate and select cloud-boot HCL plans.

The guest evaluates plans at boot and the host validates them before publishing, so both
share this package (stdlib only: the HCL parser is our own). The pipeline:

- :func:`plan_text` / :func:`read_plan_text` (bytes -> text, or a located PlanError),
- :func:`parse_plan` (text -> :class:`Plan`, positions kept; syntax and structure errors),
- :func:`evaluate` (Plan + arch [+ meta, lldp] -> :class:`EvaluatedPlan` of typed targets),
- :func:`select_target` (by name, default_target, arch variants: upstream's rule),
- :func:`validate_plan` (all errors, for amd64 and arm64: what the publisher runs).

Every failure is a :class:`PlanError` whose ``where`` is ``file:line:col``.
"""

from guest.contract.plan.errors import PlanError
from guest.contract.plan.load import plan_text, read_plan_bytes, read_plan_text
from guest.contract.plan.model import (
    DEFAULT_MENU_PROMPT,
    MAX_SUBPLAN_DEPTH,
    DiskSource,
    EvaluatedPlan,
    Lldp,
    Menu,
    OciSource,
    Plan,
    Source,
    SubplanSource,
    Target,
)
from guest.contract.plan.resolve import evaluate, evaluate_collecting, parse_timeout
from guest.contract.plan.select import select_target
from guest.contract.plan.validate import parse_plan, validate_plan

__all__ = [
    "DEFAULT_MENU_PROMPT",
    "MAX_SUBPLAN_DEPTH",
    "DiskSource",
    "EvaluatedPlan",
    "Lldp",
    "Menu",
    "OciSource",
    "Plan",
    "PlanError",
    "Source",
    "SubplanSource",
    "Target",
    "evaluate",
    "evaluate_collecting",
    "parse_plan",
    "parse_timeout",
    "plan_text",
    "read_plan_bytes",
    "read_plan_text",
    "select_target",
    "validate_plan",
]
