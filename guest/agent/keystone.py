"""OpenStack Keystone application credentials -> a token for the metadata document.

``cloudboot.openstack.auth-url`` (the Keystone v3 root, ``https://keystone:5000/v3``),
``.app-cred-id`` and ``.app-cred-secret`` (upstream's knobs): the agent POSTs the pair to
``<auth-url>/auth/tokens`` with the ``application_credential`` method (Keystone v3 identity
API, "Authenticating with an Application Credential"); Keystone answers 201 with the
token in the ``X-Subject-Token`` header, and that token is used as the metadata token
(``Authorization: Bearer``), as upstream does.

The secret travels only in that POST's body, to that URL (no redirect is followed), and
never appears in a log line or an error; Keystone's own error text is shown bounded, with
the secret masked should it ever echo it. The token is bounded in size too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    import ssl

    from guest.agent.machine import Paths

KNOBS = (
    "cloudboot.openstack.auth-url",
    "cloudboot.openstack.app-cred-id",
    "cloudboot.openstack.app-cred-secret",
)
MAX_TOKEN = 8192  # Fernet tokens are ~200 bytes; PKI tokens once were a few KiB
MAX_ERROR_BODY = 4096


class KeystoneError(CloudbootError):
    pass


@dataclass(frozen=True)
class AppCredential:
    """An OpenStack application credential (id + secret) and the Keystone it logs in to."""

    auth_url: str
    credential_id: str
    secret: str = field(repr=False)

    @property
    def tokens_url(self) -> str:
        return self.auth_url.rstrip("/") + "/auth/tokens"


def from_knobs(raw: Mapping[str, str]) -> AppCredential | None:
    """The credential when all three knobs are set; None when none is; an error naming
    the missing knobs otherwise (a half-configured credential is a typo, not a choice)."""
    values = [raw.get(k, "") for k in KNOBS]
    if not any(values):
        return None
    missing = [k for k, v in zip(KNOBS, values, strict=True) if not v]
    if missing:
        raise KeystoneError(f"{', '.join(missing)} missing (the three go together)")
    return AppCredential(*values)


def request_body(cred: AppCredential) -> bytes:
    auth = {
        "identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": cred.credential_id, "secret": cred.secret},
        }
    }
    return json.dumps({"auth": auth}).encode()


def fetch_token(
    cred: AppCredential, *, timeout: float = 15.0, ssl_context: ssl.SSLContext | None = None
) -> str:
    from guest.agent import httpclient

    shown = httpclient.redact_url(cred.tokens_url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    try:
        with httpclient.post(
            cred.tokens_url, request_body(cred), headers, timeout=timeout, ssl_context=ssl_context
        ) as resp:
            token = resp.header("x-subject-token") or ""
            status, reason = resp.status, resp.reason
            detail = _error_text(resp.read(MAX_ERROR_BODY), cred.secret) if status != 201 else ""
    except OSError as exc:
        raise KeystoneError(f"cannot reach {shown}: {exc.strerror or exc}") from None
    if status != 201:
        raise KeystoneError(f"{shown} answered HTTP {status} {reason}{detail}")
    if not token or len(token) > MAX_TOKEN or not token.isprintable():
        raise KeystoneError(f"{shown} answered 201 without a usable X-Subject-Token")
    return token


def _error_text(body: bytes, secret: str) -> str:
    """Keystone's ``{"error": {"message": ...}}``, bounded, with the secret masked."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    if not isinstance(message, str):
        return ""
    return ": " + message[:200].replace(secret, "***")


def metadata_token(params: Mapping[str, str], paths: Paths, log: Callable[[str], None]) -> str:
    """``cloudboot.metadata.token``, or a Keystone token for the application credential
    in ``cloudboot.openstack.*`` when one is given, as upstream."""
    cred = from_knobs(params)
    if cred is None:
        return params.get("cloudboot.metadata.token", "")
    from guest.agent import registryconf

    token = fetch_token(cred, ssl_context=registryconf.ssl_context(paths))
    log(f"keystone: token for application credential {cred.credential_id}")
    return token
