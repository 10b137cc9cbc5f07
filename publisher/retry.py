"""Bounded retries for registry operations, and the registry error types.

Connection errors, 5xx, 408 and 429 are worth waiting for (a registry restarting, a
proxy shedding load); everything else is the caller's mistake and fails at once. Every
retry is logged with its reason, and the total time is capped so a registry that stays
down gives a clear error instead of a hang. A ``Retry-After`` the registry sends is
honoured (we never come back sooner than asked) as long as it fits in that bound; one
that does not fit ends the retries at once rather than sleeping past the bound.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import structlog
import tenacity

from guest.contract.errors import CloudbootError

log = structlog.get_logger(__name__)

T = TypeVar("T")


class RegistryError(CloudbootError):
    """A registry refused a request; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, where: str | None = None) -> None:
        super().__init__(message, where=where)
        self.status = status


class TransientRegistryError(RegistryError):
    """5xx, 408 or 429: worth retrying, not before ``retry_after`` seconds when given."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        where: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, where=where)
        self.retry_after = retry_after


class RegistryUnavailableError(RegistryError):
    """Retries ran out: the registry stayed down or overloaded for the whole bound."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter; ``total`` caps the whole operation."""

    total: float = 60.0
    initial: float = 0.1
    maximum: float = 5.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    None when absent or unreadable (then only our own backoff applies); never negative.
    """
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(resp: requests.Response) -> str:
    """The registry's own error code and message (``{"errors":[{"code","message"}]}``)."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')} {first.get('message', '')}".strip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def error_for_status(resp: requests.Response, where: str, what: str, config: str) -> RegistryError:
    """The error for a refused request: transient (5xx, 408, 429) or the caller's to fix.

    ``where`` names the repository (``host:port/me/plan``), ``what`` the operation and
    ``config`` the docker config file that 401/403 messages point at.
    """
    status = resp.status_code
    if status in (401, 403):
        word = "unauthorized" if status == 401 else "forbidden"
        return RegistryError(
            f"{status} {word} for {where}: check credentials in {config}", status=status
        )
    if status < 400:
        return RegistryError(f"unexpected {status} for {where} ({what})", status=status)
    message = f"{status} {resp.reason or ''} for {where} ({what})".replace("  ", " ")
    if detail := _error_detail(resp):
        message += f": {detail}"
    if status >= 500 or status in (408, 429):
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        return TransientRegistryError(message, status=status, retry_after=retry_after)
    return RegistryError(message, status=status)


def tls_error(exc: requests.exceptions.SSLError, registry: str) -> RegistryError:
    """A certificate problem, said once and not retried: waiting does not fix it."""
    text = str(exc)
    reason = "handshake failed"
    for marker in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "hostname mismatch"):
        if marker in text:
            reason = marker.lower().replace("_", " ")
            break
    return RegistryError(
        f"TLS verification failed for {registry}: {reason};"
        " pass --ca-bundle (or [registry].ca_bundle) for a private CA"
    )


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


def _asked_delay(exc: BaseException | None) -> float | None:
    return exc.retry_after if isinstance(exc, TransientRegistryError) else None


def _backoff(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    """Jittered exponential backoff, stretched to the registry's ``Retry-After``."""
    jittered = tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.maximum)

    def wait(state: tenacity.RetryCallState) -> float:
        delay = jittered(state)
        exc = state.outcome.exception() if state.outcome else None
        asked = _asked_delay(exc)
        return delay if asked is None else max(delay, asked)

    return wait


def retry_call(what: str, registry: str, policy: RetryPolicy, operation: Callable[[], T]) -> T:
    """Run ``operation``; retry transient faults with jittered exponential backoff."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "registry retry",
            operation=what,
            registry=registry,
            attempt=state.attempt_number,
            status=getattr(exc, "status", 0),
            reason=_reason(exc),
            retry_after=_asked_delay(exc),
            sleep=round(state.upcoming_sleep, 3),
        )

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        wait=_backoff(policy),
        stop=tenacity.stop_before_delay(policy.total),
        before_sleep=before_sleep,
        reraise=True,
    )
    started = time.monotonic()
    try:
        return retryer(operation)
    except (TransientRegistryError, requests.ConnectionError, requests.Timeout) as exc:
        if isinstance(exc, requests.exceptions.SSLError):
            raise
        attempts = retryer.statistics.get("attempt_number", 1)
        message = (
            f"registry {registry} unavailable for {what} after {attempts} attempt(s)"
            f" within {policy.total:g}s: {_reason(exc)}"
        )
        asked = _asked_delay(exc)
        if asked is not None and time.monotonic() - started + asked >= policy.total:
            message += f" (it asked to retry after {asked:g}s, beyond the bound)"
        raise RegistryUnavailableError(message, status=getattr(exc, "status", 0)) from None
