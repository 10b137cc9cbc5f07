"""Registry credentials and the bearer-token challenge flow (spec section 2, "Auth").

Credentials come from docker's ``config.json`` (``credHelpers``, inline ``auths``,
``credsStore``) and then ``REGISTRY_USERNAME``/``REGISTRY_PASSWORD``, so a machine that
can ``docker push`` can ``cloudboot push`` too. Secrets live only in ``Credentials`` (whose
repr hides them) and in request headers; they are never logged, put in argv or in errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from guest.contract.challenge import Challenge, parse_challenge
from guest.contract.errors import CloudbootError
from publisher.run import ToolMissingError, run

log = structlog.get_logger(__name__)


class CredentialsError(CloudbootError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for messages ("~/.docker/config.json auths")

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (as docker does)."""
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def docker_config_hint(env: Mapping[str, str] | None = None) -> str:
    """The docker config path as messages show it (``~/.docker/config.json``)."""
    shown, home = str(docker_config_path(env)), str(Path.home())
    return "~" + shown[len(home) :] if shown.startswith(home) else shown


def _server_key(entry: str) -> str:
    """Reduce an ``auths`` key (``https://host:port/v1/``) to ``host:port``."""
    text = entry.split("://", 1)[-1]
    return text.split("/", 1)[0].lower()


def _helper_get(helper: str, registry: str, source: str) -> Credentials | None:
    """Ask ``docker-credential-<helper>``; the server name goes over stdin, never argv."""
    binary = f"docker-credential-{helper}"
    try:
        proc = run([binary, "get"], input=registry.encode(), check=False)
    except ToolMissingError:
        log.warning("credential helper not found", helper=binary, registry=registry)
        return None
    if proc.returncode != 0:
        # "credentials not found in native keychain" is the helper's normal "no".
        log.debug("credential helper has no entry", helper=binary, registry=registry)
        return None
    try:
        data = json.loads(proc.stdout)
        return Credentials(str(data["Username"]), str(data["Secret"]), f"{source} ({binary})")
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(
            f"credential helper {binary} returned output that is not its JSON format",
            where=registry,
        ) from None


def _inline_auth(entry: Mapping[str, object], registry: str, source: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, password = base64.b64decode(auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(
                f'auths["{registry}"].auth is not base64 of user:password', where=source
            ) from None
        return Credentials(user, password, f"{source} auths")
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret, f"{source} auths")
    return None


def lookup_credentials(
    registry: str,
    *,
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``), or None for anonymous access."""
    env = os.environ if env is None else env
    path = config_path or docker_config_path(env)
    key = registry.lower()
    if path.is_file():
        source = str(path)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read docker config: {exc}", where=source) from None
        helpers = config.get("credHelpers") or {}
        auths = {_server_key(k): v for k, v in (config.get("auths") or {}).items()}
        found = None
        if key in helpers:
            found = _helper_get(str(helpers[key]), registry, source)
        if found is None and isinstance(auths.get(key), dict):
            found = _inline_auth(auths[key], registry, source)
        if found is None and config.get("credsStore"):
            found = _helper_get(str(config["credsStore"]), registry, source)
        if found is not None:
            return found
    user, password = env.get("REGISTRY_USERNAME"), env.get("REGISTRY_PASSWORD")
    if user and password is not None:
        return Credentials(user, password, "REGISTRY_USERNAME/REGISTRY_PASSWORD")
    return None


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class TokenCache:
    """Bearer tokens per (realm, service, scope), reused until shortly before they expire.

    Keeping them is what makes repeated in-process publishes cheap: no token round trip
    per request once the first challenge has been answered.
    """

    tokens: dict[tuple[str, str, str], _Token] = field(default_factory=dict)

    def get(self, key: tuple[str, str, str]) -> str | None:
        token = self.tokens.get(key)
        if token and token.expires > time.monotonic():
            return token.value
        return None

    def put(self, key: tuple[str, str, str], value: str, expires_in: float) -> None:
        # Renew 10% early so a token never expires between our check and the request.
        self.tokens[key] = _Token(value, time.monotonic() + max(expires_in * 0.9, 1.0))


def token_from_response(body: Mapping[str, object], realm: str) -> tuple[str, float]:
    """(token, lifetime) from a token endpoint answer: ``token`` or ``access_token``."""
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialsError("token endpoint answered without token/access_token", where=realm)
    expires_in = body.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 60.0
    return token, lifetime


#: Fetches a token: (realm URL, query params, headers) -> (HTTP status, JSON body or None).
TokenFetcher = Callable[[str, Mapping[str, str], Mapping[str, str]], tuple[int, Any]]


@dataclass
class RegistryAuth:
    """The ``Authorization`` header each repository gets, learnt from 401 challenges.

    Basic credentials are sent only after a registry asked for them; bearer tokens are
    fetched once per (realm, service, scope) and reused until shortly before they expire.
    Network access for the token endpoint is the caller's ``fetch_token`` (the client's
    session), so this class holds state and decisions only.
    """

    credentials: Callable[[str], Credentials | None]
    tokens: TokenCache
    fetch_token: TokenFetcher

    def __post_init__(self) -> None:
        self._basic: dict[str, str] = {}  # registry -> Basic header once a 401 asked for it
        self._bearer_scope: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def _credentials_for(self, registry: str) -> Credentials | None:
        if registry not in self._creds:
            self._creds[registry] = self.credentials(registry)
        return self._creds[registry]

    def header(self, registry: str, repository: str) -> str | None:
        key = self._bearer_scope.get((registry, repository))
        if key and (token := self.tokens.get(key)):
            return f"Bearer {token}"
        return self._basic.get(registry)

    def answer(self, registry: str, repository: str, challenge: str, used: str | None) -> bool:
        """Prepare auth for a retry after a 401; False when we have nothing new to offer.

        Serialised: concurrent requests of one publish that all met the challenge wait for
        the first to fetch a token and then reuse it, instead of each asking for one.
        """
        with self._lock:
            current = self.header(registry, repository)
            if current is not None and current != used:
                return True  # another thread already obtained fresh auth
            return self._obtain(registry, repository, parse_challenge(challenge))

    def _obtain(self, registry: str, repository: str, challenge: Challenge) -> bool:
        creds = self._credentials_for(registry)
        if challenge.scheme == "basic":
            if creds is None or registry in self._basic:
                return False
            self._basic[registry] = creds.basic_header()
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope") or f"repository:{repository}:pull,push"
        key = (realm, service, scope)
        if self._bearer_scope.get((registry, repository)) == key and self.tokens.get(key):
            return False  # that very token was just refused
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers = {"Authorization": creds.basic_header()} if creds else {}
        status, body = self.fetch_token(realm, params, headers)
        if status in (401, 403) or not isinstance(body, Mapping):
            return False
        token, lifetime = token_from_response(body, realm)
        self.tokens.put(key, token, lifetime)
        self._bearer_scope[(registry, repository)] = key
        return True
