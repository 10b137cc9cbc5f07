"""Adapters from the pipeline's stage protocols to the publisher and the media builder.

One ``RegistryClient`` (pooled connections, cached tokens) and one decrypted signing key
live for the whole watcher, so a plan edit costs a validation and a few HTTP requests,
not a process start, a key derivation and a TLS handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from guest.errors import CloudbootError
from guest.oci import parse_ref
from guest.plan import PlanError, validate_plan
from publisher.config import Config
from publisher.push import InvalidPlanError, publish_plan
from publisher.registry import RegistryClient, client_from_config
from publisher.signing import SigningKey, is_encrypted, load_private_key, read_password
from watcher.watch.pipeline import PlanOutcome

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

    @classmethod
    def from_config(
        cls, config: Config, annotations: Annotations | None = None
    ) -> PublisherPlanStage:
        client = client_from_config(config.registry)
        return cls(config, client, load_signing_key(config), annotations)

    def ref_for(self, plan: Path) -> str:
        return self.config.plan_ref(plan)

    def publish(self, plan: Path) -> PlanOutcome:
        ref = parse_ref(self.ref_for(plan))
        notes = dict(self.annotations(plan)) if self.annotations else None
        try:  # publish_plan reads and validates the plan once, before sending anything
            result = publish_plan(self.client, ref, plan, key=self.key, annotations=notes)
        except InvalidPlanError as exc:
            raise first_error(exc.errors) from None
        return PlanOutcome(result.ref, result.digest, result.uploaded, result.uploaded_bytes)
