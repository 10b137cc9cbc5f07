"""A stand-in for OpenStack Keystone's v3 token API, application-credential method only.

Not Keystone: a small stdlib server that follows the documented request and answer of
``POST /v3/auth/tokens`` ("Authenticating with an Application Credential", Identity API
v3): the JSON body ``{"auth": {"identity": {"methods": ["application_credential"],
"application_credential": {"id": ..., "secret": ...}}}}``; success is ``201 Created`` with
the token in ``X-Subject-Token`` and a ``{"token": {...}}`` body; a bad credential is
``401`` with ``{"error": {"code": 401, "title": "Unauthorized", "message": ...}}``; a
malformed body is ``400``. (``pip install keystone`` needs a database, fernet keys, a
WSGI server and a bootstrap before an application credential exists; see the report.)
"""

from __future__ import annotations

import contextlib
import http.server
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.httpserve import serving


@dataclass
class Keystone:
    url: str  # the v3 root, what cloudboot.openstack.auth-url names
    credential_id: str
    secret: str
    issued: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


def _error(code: int, title: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "title": title, "message": message}}).encode()


@contextlib.contextmanager
def keystone_v3(credential_id: str, secret: str) -> Iterator[Keystone]:
    state = Keystone("", credential_id, secret)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, token: str = "") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if token:
                self.send_header("X-Subject-Token", token)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.bodies.append(body)
            if self.path != "/v3/auth/tokens":
                self._answer(404, _error(404, "Not Found", "The resource could not be found."))
                return
            try:
                identity = json.loads(body)["auth"]["identity"]
                methods = identity["methods"]
                cred = identity["application_credential"]
            except (ValueError, KeyError, TypeError):
                self._answer(400, _error(400, "Bad Request", "Invalid input for field 'auth'."))
                return
            if methods != ["application_credential"] or not isinstance(cred, dict):
                self._answer(400, _error(400, "Bad Request", "Expecting to find methods."))
                return
            if cred.get("id") != state.credential_id or cred.get("secret") != state.secret:
                message = "The request you have made requires authentication."
                self._answer(401, _error(401, "Unauthorized", message))
                return
            token = "gAAAAA" + secrets.token_urlsafe(140)  # the length of a Fernet token
            state.issued.append(token)
            answer = {
                "token": {
                    "methods": ["application_credential"],
                    "expires_at": "2099-01-01T00:00:00.000000Z",
                    "application_credential": {"id": state.credential_id, "restricted": True},
                }
            }
            self._answer(201, json.dumps(answer).encode(), token)

    with serving(Handler, "keystone-v3") as port:
        state.url = f"http://127.0.0.1:{port}/v3"
        yield state
