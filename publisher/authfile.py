"""Which credentials file to use, and ``cloudboot login``/``logout`` writing it.

The file is docker's ``config.json`` (podman's and skopeo's ``auth.json`` has the same
``auths`` format): ``--authfile`` first, then ``$REGISTRY_AUTH_FILE`` (podman, skopeo,
buildah), then ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``. ``login`` stores
through the credential helper the file names (``credHelpers`` for the registry, else
``credsStore``; the ``docker-credential-*`` protocol: JSON on stdin, never argv), and
inline base64 ``auth`` only when there is none, as ``docker login`` does. Every other key
of the file is kept, and the file is replaced atomically with mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guest.contract.fsutil import write_atomic
from publisher.auth import Credentials, CredentialsError, docker_config_path, lookup_credentials
from publisher.inputs import read_input
from publisher.run import ToolMissingError, run

AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"
ENV_CREDENTIALS = "REGISTRY_USERNAME/REGISTRY_PASSWORD"
#: Secrets in our environment that a credential helper has no use for.
SECRET_ENV = ("REGISTRY_PASSWORD", "COSIGN_PASSWORD")
#: A credentials file is small; a huge one is a mistake, not something to parse.
MAX_AUTH_FILE = 4 << 20


def auth_file(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The credentials file in effect: ``--authfile``, ``$REGISTRY_AUTH_FILE``, docker's."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit
    if env.get(AUTH_FILE_ENV):
        return Path(env[AUTH_FILE_ENV])
    return docker_config_path(env)


def credentials_lookup(path: Path) -> Any:
    """The credentials callable a ``RegistryClient`` takes, reading ``path``."""

    def lookup(registry: str) -> Credentials | None:
        return lookup_credentials(registry, config_path=path)

    return lookup


def auth_hint(registry: str, creds: Credentials | None, path: Path) -> str:
    """What to do after a 401/403, naming where the refused credentials came from."""
    if creds is None:
        return (
            f"no credentials for {registry}: run `cloudboot login {registry}`, set"
            f" {ENV_CREDENTIALS}, or pass --authfile (looked in {path})"
        )
    if creds.source == ENV_CREDENTIALS:
        return (
            f"the credentials from {ENV_CREDENTIALS} were refused: check those variables"
            f" (or unset them and run `cloudboot login {registry}`)"
        )
    return (
        f"the credentials from {creds.source} were refused: run `cloudboot login {registry}`"
        f" again, or set {ENV_CREDENTIALS}"
    )


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = read_input(path, limit=MAX_AUTH_FILE, what="credentials file")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"not valid JSON: {exc}", where=str(path)) from None
    if not isinstance(doc, dict):
        raise CredentialsError("expected a JSON object", where=str(path))
    return doc


def _save(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace the file atomically, 0600 (it holds secrets when no helper is configured)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, (json.dumps(doc, indent="\t") + "\n").encode(), durable=True, mode=0o600)


def _helper_for(doc: Mapping[str, Any], registry: str) -> str | None:
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict) and registry in helpers:
        return str(helpers[registry])
    store = doc.get("credsStore")
    return str(store) if store else None


def _helper(helper: str, action: str, payload: bytes, registry: str) -> None:
    binary = f"docker-credential-{helper}"
    try:
        # The helper needs its own store's environment, not our other secrets.
        scrub = {name: "" for name in SECRET_ENV if name in os.environ}
        proc = run([binary, action], input=payload, check=False, env=scrub)
    except ToolMissingError:
        raise CredentialsError(
            f"credential helper {binary} is not installed (named by the credentials file):"
            " install it or remove credsStore/credHelpers",
            where=registry,
        ) from None
    if proc.returncode != 0:
        said = proc.stdout.decode(errors="replace").strip().splitlines()[:1]
        raise CredentialsError(
            f"{binary} {action} failed{': ' + said[0] if said else ''}", where=registry
        )


def login(path: Path, registry: str, username: str, password: str) -> str:
    """Store credentials for ``registry``; returns where they went (file or helper)."""
    doc = _load(path)
    helper = _helper_for(doc, registry)
    if helper is not None:
        payload = json.dumps({"ServerURL": registry, "Username": username, "Secret": password})
        _helper(helper, "store", payload.encode(), registry)
        auths = doc.setdefault("auths", {})
        auths.setdefault(registry, {})  # docker records the server; the secret is in the helper
        auths[registry].pop("auth", None)
        _save(path, doc)
        return f"docker-credential-{helper}"
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    doc.setdefault("auths", {})[registry] = {"auth": token}
    _save(path, doc)
    return str(path)


def logout(path: Path, registry: str) -> bool:
    """Remove ``registry``'s credentials; False when there were none."""
    doc = _load(path)
    auths = doc.get("auths") or {}
    found = registry in auths
    helper = _helper_for(doc, registry)
    if helper is not None:
        try:
            _helper(helper, "erase", registry.encode(), registry)
            found = True
        except CredentialsError:
            pass  # nothing stored there
    if registry in auths:
        del auths[registry]
        _save(path, doc)
    return found
