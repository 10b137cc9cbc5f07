"""Registry credentials stay with the registry (issue 13, low findings).

Two real HTTP servers on loopback: a registry stand-in on 127.0.0.1 that wants Basic
credentials and then points its upload ``Location``, its tag-list ``Link`` and its bearer
``realm`` at a second server on 127.0.0.2 (another host). The second server records every
``Authorization`` header it is sent: the attack succeeds if it ever sees one.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from guest.contract.oci import parse_ref
from publisher.auth import Credentials, CredentialsError
from publisher.blob import Blob
from publisher.registry import RegistryClient, RetryPolicy

CREDS = Credentials("carol", "s3cret-pw", "test")
BASIC = CREDS.basic_header()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """The other host: answers everything kindly and remembers what it was sent."""

    seen: list[tuple[str, str, str | None]]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/token"):
            body = json.dumps({"token": "t"}).encode()
        elif "/tags/list" in self.path:
            body = json.dumps({"name": "me/x", "tags": ["b"]}).encode()
        else:
            body = b""
        self.send_response(201 if self.command == "PUT" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_PATCH = do_POST = do_HEAD = _handle


class _Registry(http.server.BaseHTTPRequestHandler):
    """Our registry: wants Basic (or a bearer realm elsewhere), sends us to the other host."""

    other = ""
    bearer = False
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.headers.get("Authorization") != BASIC:
            challenge = (
                f'Bearer realm="http://{self.other}/token",service="x"'
                if self.bearer
                else 'Basic realm="registry"'
            )
            self._send(401, {"WWW-Authenticate": challenge})
            return
        if self.command == "POST":
            self._send(202, {"Location": f"http://{self.other}/upload/1?_state=abc"})
        elif "/tags/list" in self.path:
            link = f'<http://{self.other}/v2/me/x/tags/list?last=a>; rel="next"'
            self._send(200, {"Link": link}, json.dumps({"name": "me/x", "tags": ["a"]}).encode())
        else:
            self._send(404, {})

    do_GET = do_PUT = do_PATCH = do_POST = do_HEAD = _handle


@contextlib.contextmanager
def _serve(host: str, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _two_hosts(*, bearer: bool) -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    recorder = type("Other", (_Recorder,), {"seen": seen})
    with _serve("127.0.0.2", recorder) as other:
        registry = type("Reg", (_Registry,), {"other": other, "bearer": bearer})
        with _serve("127.0.0.1", registry) as address:
            yield address, seen


def _client() -> RegistryClient:
    return RegistryClient(insecure=True, credentials=lambda r: CREDS, retry=RetryPolicy(total=1))


def test_upload_location_on_another_host_gets_no_credentials() -> None:
    with _two_hosts(bearer=False) as (address, seen):
        client = _client()
        client.push_blob(parse_ref(f"{address}/me/x:1"), Blob.of_bytes(b"kernel bytes"))
        client.close()
    # the blob did go to the other host (the registry said so), without our credentials
    assert [(m, p.split("?")[0]) for m, p, _ in seen] == [("PUT", "/upload/1")]
    assert all(auth is None for _, _, auth in seen), seen


def test_tag_list_link_on_another_host_gets_no_credentials() -> None:
    with _two_hosts(bearer=False) as (address, seen):
        tags = _client().list_tags(parse_ref(f"{address}/me/x"))
    assert tags == ["a", "b"]
    assert [p for _, p, _ in seen] == ["/v2/me/x/tags/list?last=a"]
    assert all(auth is None for _, _, auth in seen), seen


def test_plain_http_realm_on_another_host_never_sees_basic_credentials() -> None:
    with (
        _two_hosts(bearer=True) as (address, seen),
        pytest.raises(CredentialsError, match="plain HTTP on another host") as info,
    ):
        _client().list_tags(parse_ref(f"{address}/me/x"))
    assert seen == []  # the realm was never even asked
    assert CREDS.password not in str(info.value)
