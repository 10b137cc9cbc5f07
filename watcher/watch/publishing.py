"""The pipeline's plan stage on top of the publisher.

One ``RegistryClient`` (pooled connections, cached tokens) and one decrypted signing key
live for the whole watcher, so a plan edit costs a validation and a few HTTP requests,
not a process start, a key derivation and a TLS handshake.

Those requests mostly run ahead of time: as soon as an edit has settled (well inside the
debounce window) the stage validates, uploads and signs the new bytes, and when the
window closes the run only moves the tag, provided the file still holds those bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.oci import parse_ref
from guest.contract.plan import PlanError, validate_plan
from publisher.config import Config
from publisher.push import InvalidPlanError, PreparedPush, commit, prepare_plan, read_plan
from publisher.registry import RegistryClient, client_from_config
from publisher.signing import SigningKey, is_encrypted, load_private_key, read_password
from watcher.watch.pipeline import PlanOutcome

log = structlog.get_logger(__name__)

Annotations = Callable[[Path], Mapping[str, str]]


def load_signing_key(config: Config) -> SigningKey:
    """The key named by ``[signing].key``; its password comes from ``$COSIGN_PASSWORD``."""
    path = config.signing.key
    where = str(config.source) if config.source else "cloudboot.toml"
    if not path.is_file():
        raise CloudbootError(
            f"[signing].key: no signing key at {path} (create one with `cloudboot key generate`)",
            where=where,
        )
    password = read_password() if is_encrypted(path.read_bytes()) else None
    return load_private_key(path, password)


def check_plan(plan: Path) -> str:
    """Read and validate a plan; raise its first error (file:line:col) with a count."""
    try:
        text = plan.read_bytes().decode()
    except OSError as exc:
        raise CloudbootError(f"cannot read plan: {exc.strerror}", where=str(plan)) from None
    except UnicodeDecodeError as exc:
        raise CloudbootError(
            f"plan is not UTF-8 (byte offset {exc.start})", where=str(plan)
        ) from None
    errors = validate_plan(text, str(plan))
    if errors:
        raise first_error(errors)
    return text


def first_error(errors: Sequence[PlanError]) -> CloudbootError:
    """One log line that starts with the first problem's file:line:col, plus a count."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CloudbootError(f"{first.message}{more}", where=first.where)


@dataclass(frozen=True)
class _Ahead:
    """A preparation started for one plan's bytes (identified by their sha256)."""

    sha256: str
    future: Future[PreparedPush]


def _in_background(body: Callable[[], PreparedPush], name: str) -> Future[PreparedPush]:
    """Run ``body`` on a daemon thread: a preparation stuck in registry retries must not
    hold up the watcher's exit (what it left behind is untagged, so abandoning it is safe).
    """
    future: Future[PreparedPush] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(body())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class PublisherPlanStage:
    """Validate, then sign and publish one plan to the ref the config maps it to."""

    def __init__(
        self,
        config: Config,
        client: RegistryClient,
        key: SigningKey,
        annotations: Annotations | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.key = key
        self.annotations = annotations
        self._ahead: dict[Path, _Ahead] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: Config, annotations: Annotations | None = None
    ) -> PublisherPlanStage:
        client = client_from_config(config.registry)
        return cls(config, client, load_signing_key(config), annotations)

    def ref_for(self, plan: Path) -> str:
        return self.config.plan_ref(plan)

    def prepare(self, plan: Path) -> None:
        """Start publishing the plan's current bytes, all but the tag move, in the background.

        A failure here is not reported: the run that follows redoes the work and reports
        it. Bytes already being prepared are not prepared twice.
        """
        try:
            data = plan.read_bytes()
        except OSError:
            return
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._ahead.get(plan)
            if known is not None and known.sha256 == sha:
                return
            future = _in_background(lambda: self._prepare(plan, data), "cloudboot-ahead")
            self._ahead[plan] = _Ahead(sha, future)
        log.debug("preparing plan ahead of the window", file=str(plan), sha256=sha[:12])

    def publish(self, plan: Path) -> PlanOutcome:
        data = read_plan(plan)
        prepared = self._prepared(plan, hashlib.sha256(data).hexdigest())
        ahead = prepared is not None
        try:  # prepare_plan validates the plan, before sending anything
            if prepared is None:
                prepared = self._prepare(plan, data)
            result = commit(self.client, prepared)
        except InvalidPlanError as exc:
            raise first_error(exc.errors) from None
        return PlanOutcome(
            result.ref, result.digest, result.uploaded, result.uploaded_bytes, prepared_ahead=ahead
        )

    def _prepared(self, plan: Path, sha: str) -> PreparedPush | None:
        """The background preparation of exactly these bytes, if one succeeded."""
        with self._lock:
            ahead = self._ahead.pop(plan, None)
        if ahead is None or ahead.sha256 != sha:
            return None
        try:
            return ahead.future.result()
        except CloudbootError as exc:  # redone (and reported) by the caller
            log.debug("plan preparation failed; publishing afresh", file=str(plan), error=str(exc))
            return None

    def _prepare(self, plan: Path, data: bytes) -> PreparedPush:
        ref = parse_ref(self.ref_for(plan))
        notes = dict(self.annotations(plan)) if self.annotations else None
        return prepare_plan(self.client, ref, data, plan, key=self.key, annotations=notes)
