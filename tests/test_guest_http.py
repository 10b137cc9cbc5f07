"""guest.agent.httpclient against real servers: Python's http.server for the framing corner cases
(chunked, redirects, truncation), docker-registry for a large blob. TLS and Basic/bearer
auth through it are covered in test_guest_fetch (registry with a self-signed cert)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from guest.agent import httpclient
from publisher.localregistry import RunningRegistry
from tests.helpers import push_blob

BODY = os.urandom(300_000)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Handler.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BODY), 70_001):
                piece = BODY[i : i + 70_001]
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", "/plain?after=redirect")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/plain"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + 10))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")


@contextlib.contextmanager
def _server() -> Iterator[str]:
    _Handler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_chunked_and_streamed_reads() -> None:
    with _server() as base, httpclient.get(f"{base}/chunked") as resp:
        assert resp.status == 200 and resp.header("Transfer-Encoding") == "chunked"
        first = resp.read(1000)
        rest = bytearray()
        while piece := resp.read(65536):
            rest += piece
    assert first + rest == BODY


def test_redirect_drops_private_headers_keeps_others() -> None:
    with _server() as base:
        with httpclient.get(
            f"{base}/redirect", {"Accept": "x/y"}, private={"Authorization": "Bearer tok"}
        ) as resp:
            assert resp.status == 200 and resp.read() == BODY
            assert resp.url == f"{base}/plain?after=redirect"
        assert _Handler.seen == [("/redirect", "Bearer tok"), ("/plain?after=redirect", "")]
        with httpclient.get(f"{base}/missing") as resp:
            assert (resp.status, resp.reason, resp.read()) == (404, "Not Found", b"no")


def test_truncated_body_and_garbage_are_errors() -> None:
    with (
        _server() as base,
        httpclient.get(f"{base}/short") as resp,
        pytest.raises(httpclient.HttpError, match="closed 10 bytes before the body's end"),
    ):
        resp.read()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(httpclient.HttpError, match=r"not an HTTP response: 'SSH-2\.0-OpenSSH'"):
            httpclient.get(f"http://127.0.0.1:{port}/")
    with pytest.raises(httpclient.HttpError, match="not an http"):
        httpclient.get("ftp://127.0.0.1/x")


def test_large_blob_from_docker_registry(registry: RunningRegistry) -> None:
    blob = os.urandom(6 << 20)
    digest = push_blob(registry.url, "big/blob", blob).digest
    with httpclient.get(f"{registry.url}/v2/big/blob/blobs/{digest}") as resp:
        assert resp.status == 200
        hasher = hashlib.sha256()
        while piece := resp.read(1 << 20):
            hasher.update(piece)
    assert "sha256:" + hasher.hexdigest() == digest


@contextlib.contextmanager
def _raw_server(answer: bytes) -> Iterator[str]:
    """One connection answered with ``answer`` verbatim, then closed."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            with contextlib.suppress(OSError):
                conn.sendall(answer)
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        yield f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"Transfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
        (b"Transfer-Encoding: chunked\r\n\r\n-0x1\r\n", "bad chunk size"),
        (b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n", "bad chunk size"),
        (b"Content-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"Content-Length: +5\r\n\r\n", "bad Content-Length"),
    ],
)
def test_negative_sizes_cannot_defeat_read_limits(head: bytes, error: str) -> None:
    """A negative size used to become ``stream.read(-1)``: the whole 4 MiB flood, read into
    memory by a caller that asked for at most 1000 bytes."""
    flood = bytes(4 << 20)
    with (
        _raw_server(b"HTTP/1.1 200 OK\r\n" + head + flood) as url,
        pytest.raises(httpclient.HttpError, match=error),
        httpclient.get(url) as resp,
    ):
        assert len(resp.read(1000)) <= 1000


def test_plain_http_does_not_import_the_idna_codec() -> None:
    """An ASCII host reaches getaddrinfo as bytes: a fresh interpreter (``-S``, as the
    guest's) fetches over plain http, by address and by name, without ``encodings.idna``."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\nfrom guest.agent import httpclient\n"
        "for url in sys.argv[1:]:\n"
        "    with httpclient.get(url) as resp:\n"
        "        assert resp.status == 200\n"
        "print('encodings.idna' in sys.modules)"
    )
    with _server() as base:
        by_name = base.replace("127.0.0.1", "localhost")
        out = subprocess.run(
            [sys.executable, "-S", "-c", code, f"{base}/plain", f"{by_name}/plain"],
            cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True,
        )  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr
