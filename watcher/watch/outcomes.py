"""What each pipeline stage reports: typed values, turned into JSON only by ``status``.

A plan stage reports a :class:`~publisher.workspace.PlanOutcome` (defined next to the
publisher that makes it), the kernel stage a :class:`BuildOutcome`, the VM stage a
:class:`VmOutcome`. The pipeline decides on their fields (did anything new come out,
so the VM must restart?); ``watcher.watch.status`` is the one place they become JSON
for the status file and log lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from publisher.workspace import PlanOutcome

StageName = Literal["plan", "kernel", "vm"]


@dataclass(frozen=True)
class BuildOutcome:
    """A boot.iso (re)build."""

    iso: Path
    changed: bool  # False when the incremental build left boot.iso byte-identical
    size: int = 0
    signed: bool = False
    steps_ms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VmOutcome:
    """A VM restart; NVRAM is always reset, so the guest runs the agent again."""

    state: str
    nvram: Literal["reset"] = "reset"


Outcome = PlanOutcome | BuildOutcome | VmOutcome


@dataclass(frozen=True)
class StageResult:
    """One stage of one run: what it worked on, how long it took, how it ended."""

    stage: StageName
    subject: str  # plan file, kernel/ or "vm"
    ok: bool
    duration_ms: float
    started_at: str
    outcome: Outcome | None = None  # set exactly when ok
    error: str | None = None

    @property
    def produced(self) -> bool:
        """Did this stage make something the guest has not seen (a reason to restart)?"""
        if isinstance(self.outcome, PlanOutcome):
            # the tag already at this signed digest (a revert): nothing new for the guest
            return self.outcome.uploaded
        if isinstance(self.outcome, BuildOutcome):
            return self.outcome.changed
        return False
