"""Bounded retries for registry operations, and the registry error types.

Connection errors, 5xx, 408 and 429 are worth waiting for (a registry restarting, a
proxy shedding load); everything else is the caller's mistake and fails at once. Every
retry is logged with its reason, and the total time is capped so a registry that stays
down gives a clear error instead of a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import structlog
import tenacity

from guest.errors import CloudbootError

log = structlog.get_logger(__name__)

T = TypeVar("T")


class RegistryError(CloudbootError):
    """A registry refused a request; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.status = status


class TransientRegistryError(RegistryError):
    """5xx, 408 or 429: worth retrying."""


class RegistryUnavailableError(RegistryError):
    """Retries ran out: the registry stayed down or overloaded for the whole bound."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter; ``total`` caps the whole operation."""

    total: float = 60.0
    initial: float = 0.1
    maximum: float = 5.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate problem does not heal by waiting
    return isinstance(exc, TransientRegistryError | requests.ConnectionError | requests.Timeout)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return str(exc)


def retry_call(what: str, registry: str, policy: RetryPolicy, operation: Callable[[], T]) -> T:
    """Run ``operation``; retry transient faults with jittered exponential backoff."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "registry retry",
            operation=what,
            registry=registry,
            attempt=state.attempt_number,
            reason=_reason(exc),
            sleep=round(state.upcoming_sleep, 3),
        )

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        wait=tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.maximum),
        stop=tenacity.stop_before_delay(policy.total),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retryer(operation)
    except (TransientRegistryError, requests.ConnectionError, requests.Timeout) as exc:
        if isinstance(exc, requests.exceptions.SSLError):
            raise
        attempts = retryer.statistics.get("attempt_number", 1)
        raise RegistryUnavailableError(
            f"registry {registry} unavailable for {what} after {attempts} attempt(s)"
            f" within {policy.total:g}s: {_reason(exc)}",
            status=getattr(exc, "status", 0),
        ) from None
