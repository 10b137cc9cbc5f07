"""The one error type of the plan contract: a message plus the file:line:col it is about.

Every failure in parsing, evaluating, validating or selecting a plan is a ``PlanError``
whose ``where`` is a :class:`~guest.contract.errors.Location`, so the host CLI, the publisher and
the guest agent all print the same ``plans/prod.hcl:12:3: ...`` line and never a
traceback.
"""

from __future__ import annotations

from guest.contract.errors import CloudbootError, Location


class PlanError(CloudbootError):
    """A plan problem at a known position (``where`` is always a Location)."""

    where: Location

    def __init__(self, message: str, where: Location) -> None:
        super().__init__(message, where=where)

    def __reduce__(self) -> tuple[type[PlanError], tuple[str, Location]]:
        """Picklable (``plan validate`` checks many files in worker processes)."""
        return (PlanError, (self.message, self.where))

    def with_suffix(self, suffix: str) -> PlanError:
        """The same error with extra context appended (e.g. the arch it happens on)."""
        return PlanError(f"{self.message}{suffix}", self.where)

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.where.path, self.where.line, self.where.column, self.message)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.where.path,
            "line": self.where.line,
            "column": self.where.column,
            "message": self.message,
        }
