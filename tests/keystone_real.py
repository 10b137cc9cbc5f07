"""A real OpenStack Keystone for the tests, when one is installed.

Keystone is not a project dependency (about 200 MB of OpenStack libraries and eventlet):
``python3 -m venv V && V/bin/pip install keystone`` and point
``CLOUDBOOT_TEST_KEYSTONE_VENV`` at ``V``. Then this starts it the way a deployment does,
scaled down: SQLite database (``keystone-manage db_sync``), fernet and credential keys,
``bootstrap`` (admin user, project, role, endpoints), the public WSGI application served
by ``wsgiref`` on a free loopback port, and an application credential made through the
v3 API with an admin token. Without the variable the tests that need it are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from publisher.localregistry import free_port
from publisher.run import run, spawn

VENV_VARIABLE = "CLOUDBOOT_TEST_KEYSTONE_VENV"
ADMIN_PASSWORD = "admin-Pw-31"

SERVE = """
import os
from wsgiref.simple_server import WSGIRequestHandler, make_server
from keystone.server.wsgi import initialize_public_application
class Quiet(WSGIRequestHandler):
    def log_message(self, *args): pass
make_server("127.0.0.1", int(os.environ["KS_PORT"]), initialize_public_application(),
            handler_class=Quiet).serve_forever()
"""


@dataclass(frozen=True)
class RealKeystone:
    url: str
    credential_id: str
    secret: str = field(repr=False)


def venv() -> Path | None:
    value = os.environ.get(VENV_VARIABLE, "")
    path = Path(value) if value else None
    return path if path and (path / "bin/keystone-manage").exists() else None


def _call(url: str, body: object, token: str = "") -> tuple[dict[str, str], dict[str, object]]:
    headers = {"Content-Type": "application/json"} | ({"X-Auth-Token": token} if token else {})
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(resp.headers), json.loads(resp.read())


@contextlib.contextmanager
def real_keystone(root: Path, ks_venv: Path) -> Iterator[RealKeystone]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}/v3"
    keys = {name: root / name for name in ("fernet", "receipts", "creds")}
    conf = root / "keystone.conf"
    conf.write_text(
        f"[DEFAULT]\nlog_file = {root / 'keystone.log'}\n"
        f"[database]\nconnection = sqlite:///{root / 'keystone.db'}\n"
        "[token]\nprovider = fernet\n"
        f"[fernet_tokens]\nkey_repository = {keys['fernet']}\n"
        f"[fernet_receipts]\nkey_repository = {keys['receipts']}\n"
        f"[credential]\nkey_repository = {keys['creds']}\n"
    )
    manage = [ks_venv / "bin/keystone-manage", "--config-file", conf]
    owner = ["--keystone-user", "root", "--keystone-group", "root"]
    run([*manage, "db_sync"])
    run([*manage, "fernet_setup", *owner])
    run([*manage, "credential_setup", *owner])
    run([*manage, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
         "--bootstrap-admin-url", base, "--bootstrap-public-url", base,
         "--bootstrap-region-id", "RegionOne"])  # fmt: skip
    env = {"OS_KEYSTONE_CONFIG_FILES": str(conf), "KS_PORT": str(port)}
    with spawn([ks_venv / "bin/python", "-c", SERVE], env=env, stdout=root / "serve.log"):
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("keystone did not start: see serve.log") from None
                time.sleep(0.5)
        user = {"name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}
        scope = {"project": {"name": "admin", "domain": {"id": "default"}}}
        auth = {"identity": {"methods": ["password"], "password": {"user": user}}}
        headers, body = _call(f"{base}/auth/tokens", {"auth": auth | {"scope": scope}})
        admin_token = headers["X-Subject-Token"]
        user_id = body["token"]["user"]["id"]  # type: ignore[index]
        new = {"application_credential": {"name": "cloudboot-test"}}
        _h, made = _call(f"{base}/users/{user_id}/application_credentials", new, admin_token)
        cred = made["application_credential"]
        yield RealKeystone(base, cred["id"], cred["secret"])  # type: ignore[index]
