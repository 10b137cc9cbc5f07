"""Bounded retries for registry operations, and the registry error types.

Only what can recover is retried: 5xx (but 501, which no wait fixes), 408, 429, timeouts
and connections reset or refused by a registry that answered before (a registry
restarting, a proxy shedding load). An unknown host, no route to the network, a
connection refused by a registry never reached and a TLS failure are configuration
mistakes: they fail at once, with their cause, instead of 60 s of retries. Every
retry is logged with its reason, and the total time is capped so a registry that stays
down gives a clear error instead of a hang. A ``Retry-After`` the registry sends is
honoured (we never come back sooner than asked) as long as it fits in that bound; one
that does not fit ends the retries at once rather than sleeping past the bound.
"""

from __future__ import annotations

import email.utils
import errno
import socket
import time
from collections.abc import Callable, Iterator
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


def _https_only(resp: requests.Response) -> bool:
    """A TLS port answering plain HTTP: Go's bare ``HTTP/1.0 400`` without any header
    (a HEAD has no body to say "Client sent an HTTP request to an HTTPS server")."""
    if not resp.url.startswith("http://"):
        return False
    if "HTTP request to an HTTPS server" in resp.text[:512]:
        return True
    return getattr(resp.raw, "version", 11) == 10 and not resp.headers


#: Server errors that no waiting fixes: the registry does not implement the request.
PERMANENT_5XX = frozenset({501, 505})


def error_for_status(resp: requests.Response, where: str, what: str, config: str) -> RegistryError:
    """The error for a refused request: transient (5xx, 408, 429) or the caller's to fix.

    ``where`` names the repository (``host:port/me/plan``), ``what`` the operation and
    ``config`` what 401/403 messages tell the user to do (which credentials were refused).
    """
    status = resp.status_code
    if status in (401, 403):
        word = "unauthorized" if status == 401 else "forbidden"
        return RegistryError(
            f"{status} {word} for {where}: {config or 'check the credentials'}", status=status
        )
    if status < 400:
        from publisher.distspec import not_a_registry

        return RegistryError(not_a_registry(resp, where, what), status=status)
    message = f"{status} {resp.reason or ''} for {where} ({what})".replace("  ", " ")
    if detail := _error_detail(resp):
        message += f": {detail}"
    elif status == 400 and _https_only(resp):
        message += ": this registry speaks HTTPS; drop --plain-http (or [registry].insecure)"
    if (status >= 500 and status not in PERMANENT_5XX) or status in (408, 429):
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        return TransientRegistryError(message, status=status, retry_after=retry_after)
    return RegistryError(message, status=status)


def tls_error(
    exc: requests.exceptions.SSLError, registry: str, *, skipping_verify: bool = False
) -> RegistryError:
    """A certificate problem, said once and not retried: waiting does not fix it.

    A plain-HTTP registry spoken to over HTTPS shows up as "wrong version number": the
    fix is --plain-http, not a CA bundle, so that case gets its own advice.
    """
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        note = " (--insecure only skips certificate checks, as in oras)" if skipping_verify else ""
        return RegistryError(
            f"{registry} does not speak HTTPS (TLS handshake got plain HTTP): if it is a"
            f" plain-HTTP registry, pass --plain-http (or set [registry].insecure = true){note}"
        )
    reason = "handshake failed"
    for marker in ("CERTIFICATE_VERIFY_FAILED", "hostname mismatch"):
        if marker in text:
            reason = marker.lower().replace("_", " ")
            break
    return RegistryError(
        f"TLS verification failed for {registry}: {reason};"
        " pass --ca-bundle (or [registry].ca_bundle) for a private CA, or --insecure to"
        " skip verification (never for a registry you do not control)"
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (requests -> urllib3 -> socket), breadth first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if id(item) in seen or len(seen) > 16:
            continue
        seen.add(id(item))
        yield item
        inner = [getattr(item, "reason", None), item.__cause__, item.__context__, *item.args]
        todo += [x for x in inner if isinstance(x, BaseException)]


def connection_cause(exc: BaseException) -> str:
    """What went wrong with a connection, in the words a user searches for."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror) or type(cause).__name__ == "NameResolutionError":
            return "unknown host (DNS lookup failed)"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to the registry (network unreachable)"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return "connection failed"


def _is_transient(exc: BaseException, reached: bool = True) -> bool:
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate problem does not heal by waiting
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.Timeout):
        cause = connection_cause(exc)
        if cause.startswith(("unknown host", "no route")):
            return False
        if cause == "connection refused":
            return reached  # a registry restarting, not one that was never there
    return isinstance(exc, TransientRegistryError | requests.ConnectionError | requests.Timeout)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return connection_cause(exc)
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


def retry_call(
    what: str,
    registry: str,
    policy: RetryPolicy,
    operation: Callable[[], T],
    reached: Callable[[], bool] = lambda: True,
) -> T:
    """Run ``operation``; retry transient faults with jittered exponential backoff.

    ``reached`` tells whether the registry ever answered: a refused connection is only
    worth waiting for then.
    """

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
        retry=tenacity.retry_if_exception(lambda exc: _is_transient(exc, reached())),
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
        if not _is_transient(exc, reached()):
            raise RegistryError(
                f"cannot reach registry {registry} for {what}: {_reason(exc)};"
                " check the host and port in the ref or [registry].url, and that the registry"
                " runs (`cloudboot registry serve` for the local one)"
            ) from None
        attempts = retryer.statistics.get("attempt_number", 1)
        message = (
            f"registry {registry} unavailable for {what} after {attempts} attempt(s)"
            f" within {policy.total:g}s: {_reason(exc)}"
        )
        asked = _asked_delay(exc)
        if asked is not None and time.monotonic() - started + asked >= policy.total:
            message += f" (it asked to retry after {asked:g}s, beyond the bound)"
        raise RegistryUnavailableError(message, status=getattr(exc, "status", 0)) from None
