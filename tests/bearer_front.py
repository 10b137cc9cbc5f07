"""A token-auth front for docker-registry, shared by the publisher's and the guest's tests.

Every request without the token it issued gets 401 and a ``WWW-Authenticate`` challenge
(the header is a template, so tests can offer several schemes, bare values, odd case);
``/token`` issues the token for the right Basic credentials and a repository scope.
Everything else is proxied to the real registry, every method.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
from collections.abc import Iterator

import requests

#: The challenge docker's token auth sends; {host} and {repo} are filled in.
PLAIN = 'Bearer realm="http://{host}/token",service="front",scope="repository:{repo}:pull,push"'
#: The same offer as a registry may phrase it: Basic first, a Bearer with mixed-case names,
#: bare values, and a comma inside a quoted scope.
MIXED = (
    'Basic realm="legacy", Bearer Realm="http://{host}/token", Service=front,'
    ' scope="repository:{repo}:pull,push"'
)


class BearerFront(http.server.BaseHTTPRequestHandler):
    upstream = ""
    token = "tok-7f3a"
    token_field = "token"  # or "access_token": both are in the wild
    user = "carol:pw"
    challenge = PLAIN
    issued = 0
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers["Host"]
        if self.path.startswith("/token"):
            basic = "Basic " + base64.b64encode(self.user.encode()).decode()
            if self.headers.get("Authorization") != basic or "scope=repository" not in self.path:
                self._send(401, {})
                return
            type(self).issued += 1
            doc = {self.token_field: self.token, "expires_in": 300}
            self._send(200, {}, json.dumps(doc).encode())
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            repo = self.path.split("/")[2] + "/" + self.path.split("/")[3]
            challenge = self.challenge.format(host=host, repo=repo)
            self._send(401, {"WWW-Authenticate": challenge})
            return
        keep = ("Content-Type", "Content-Range", "Accept")
        resp = requests.request(
            self.command,
            self.upstream + self.path,
            data=body,
            headers={k: v for k, v in self.headers.items() if k in keep},
            allow_redirects=False,
            timeout=10,
        )
        out = {
            k: v.replace(self.upstream, f"http://{host}")
            for k, v in resp.headers.items()
            if k in ("Location", "Docker-Content-Digest", "Content-Type", "Range", "Link")
        }
        self._send(resp.status_code, out, resp.content)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _handle


@contextlib.contextmanager
def bearer_front(upstream: str, **settings: object) -> Iterator[tuple[str, type[BearerFront]]]:
    """``(host:port, handler class)``; ``settings`` override the class attributes."""
    handler = type("Front", (BearerFront,), {"upstream": upstream, "issued": 0, **settings})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
