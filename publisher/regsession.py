"""The registry transport under ``publisher.registry``: one ``requests`` session, auth
(credentials, challenges, cached bearer tokens), proxies and CA bundle per origin, and
the retry of one operation as a unit (``publisher.retry``).

Credentials go only to the registry's own origin: an upload ``Location`` or a pagination
``Link`` that names another host gets no ``Authorization`` header and no challenge
answered on its behalf (docs/trust-model.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests

from guest.contract.oci import Ref
from publisher.auth import (
    Credentials,
    RegistryAuth,
    TokenCache,
    docker_config_path,
    lookup_credentials,
)
from publisher.retry import RegistryError, RetryPolicy, error_for_status, retry_call, tls_error

T = TypeVar("T")


@dataclass
class RegistrySession:
    """HTTP exchanges with registries: authenticated, and retried as whole operations."""

    insecure: bool | None = None  # True: plain HTTP; False: HTTPS; None: HTTP on loopback only
    ca_bundle: Path | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    credentials: Callable[[str], Credentials | None] = lookup_credentials
    session: requests.Session = field(default_factory=requests.Session)
    tokens: TokenCache = field(default_factory=TokenCache)
    #: False: HTTPS without certificate checks (``--insecure``, as oras means it).
    tls_verify: bool = True

    def __post_init__(self) -> None:
        # Passed on every request: a session-level setting loses to $REQUESTS_CA_BUNDLE.
        self._verify: str | bool = str(self.ca_bundle) if self.ca_bundle else True
        if not self.tls_verify:
            import urllib3

            self._verify = False
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._authfile = docker_config_path()
        # The environment (proxies, $REQUESTS_CA_BUNDLE) is read once per registry, not on
        # every request as requests does by default: that lookup was ~0.4 ms a request.
        self.session.trust_env = False
        self._transport: dict[str, dict[str, Any]] = {}
        self._auth = RegistryAuth(self.credentials, self.tokens, self._fetch_token)
        self._reached: set[str] = set()  # registries that answered (refusals then retried)

    def use_authfile(self, path: Path) -> None:
        """Read credentials from ``path`` (``--authfile``, ``$REGISTRY_AUTH_FILE``)."""
        from publisher.authfile import credentials_lookup

        self._authfile = path
        self.credentials = credentials_lookup(path)
        self._auth = RegistryAuth(self.credentials, self.tokens, self._fetch_token)

    def base_url(self, ref: Ref) -> str:
        plain = ref.insecure_default if self.insecure is None else self.insecure
        scheme = "http" if plain else "https"
        return f"{scheme}://{ref.registry}"

    def _settings(self, url: str) -> dict[str, Any]:
        """Proxies and CA bundle for ``url``'s origin, from the environment once per origin."""
        origin = "/".join(url.split("/", 3)[:3])
        settings = self._transport.get(origin)
        if settings is None:
            verify: str | bool = self._verify
            if verify is True:
                verify = (
                    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                )
            proxies = requests.utils.get_environ_proxies(url)
            settings = self._transport[origin] = {"verify": verify, "proxies": proxies}
        return settings

    def _fetch_token(
        self, realm: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, Any]:
        resp = self.session.get(
            realm, params=params, headers=headers, timeout=self.timeout, **self._settings(realm)
        )
        if resp.status_code in (401, 403):
            return resp.status_code, None
        if resp.status_code >= 400:
            raise error_for_status(resp, f"token endpoint {realm}", "token request", "")
        try:
            return resp.status_code, resp.json()
        except ValueError:
            raise RegistryError(f"token endpoint {realm} answered with non-JSON") from None

    def request(
        self,
        method: str,
        ref: Ref,
        url: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        missing_ok: bool = False,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One HTTP exchange with auth (answering at most one challenge); no retries here."""
        base = self.base_url(ref)
        full = urljoin(base + "/", url.lstrip("/")) if "://" not in url else url
        # An upload Location or a pagination Link may name another host: it gets no
        # credentials and no challenge answered on its behalf (docs/trust-model.md).
        ours = _origin(full) == _origin(base)
        settings = {"timeout": self.timeout, **self._settings(full), **kwargs}
        for attempt in range(2):
            hdrs = dict(headers or {})
            if ours and (auth := self._auth.header(ref.registry, ref.repository)):
                hdrs["Authorization"] = auth
            try:
                resp = self.session.request(method, full, headers=hdrs, **settings)
            except requests.exceptions.SSLError as exc:
                raise tls_error(exc, ref.registry, skipping_verify=not self.tls_verify) from None
            self._reached.add(ref.registry)
            if (
                resp.status_code == 401
                and attempt == 0
                and ours
                and self._auth.answer(
                    ref.registry,
                    ref.repository,
                    resp.headers.get("WWW-Authenticate", ""),
                    hdrs.get("Authorization"),
                )
            ):
                continue
            break
        if resp.status_code in ok or (missing_ok and resp.status_code == 404):
            return resp
        hint = ""
        if resp.status_code in (401, 403):
            from publisher.authfile import auth_hint

            creds = self.credentials(ref.registry)
            hint = auth_hint(ref.registry, creds, self._authfile)
        raise error_for_status(resp, ref.name, what, hint)

    def retrying(self, what: str, ref: Ref, operation: Callable[[], T]) -> T:
        """Run ``operation`` with bounded, jittered exponential backoff on transient faults."""
        return retry_call(
            what, ref.registry, self.retry, operation, lambda: ref.registry in self._reached
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default
