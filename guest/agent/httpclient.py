"""A small HTTP/1.1 GET client for the guest: registries and the metadata document.

Why not urllib: ``urllib.request`` pulls in ``http.client``, the ``email`` parser,
``tempfile``, ``ssl`` and more at import; under TCG that import alone was ~0.3 s of every
boot, more than fetching and verifying the plan. What the guest needs is narrow: GET with
headers, ``Content-Length``/chunked/until-close bodies read as a stream, redirects, and
TLS (``ssl`` is imported only for an ``https`` URL). One connection per request
(``Connection: close``): a boot makes a handful of requests.

Headers given as ``private`` (credentials) are sent to the first URL only and dropped on
any redirect, as urllib's unredirected headers are: a blob redirect to object storage
must not carry registry credentials. Errors never include header values.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    import ssl

MAX_REDIRECTS = 5
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100
REDIRECTS = (301, 302, 303, 307, 308)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DECIMAL = re.compile(r"[0-9]{1,19}")


class HttpError(OSError):
    """A transport or protocol failure (not an HTTP status: callers look at those)."""


class Response:
    """Status, headers (names lower-cased) and the body as a stream."""

    def __init__(
        self, url: str, status: int, reason: str, headers: dict[str, str], body: _Body
    ) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self._body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def read(self, limit: int = -1) -> bytes:
        """Up to ``limit`` bytes (all when negative); ``b""`` at the end of the body."""
        return self._body.read(limit)

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()


class _Body:
    """Content-Length, chunked, or until-close framing over a buffered socket file."""

    def __init__(self, stream: BinaryIO, sock: socket.socket, length: int | None, chunked: bool):
        self.stream = stream
        self.sock = sock
        self.remaining = length
        self.chunked = chunked
        self.chunk_left = 0
        self.done = length == 0

    def read(self, limit: int) -> bytes:
        out = bytearray()
        while not self.done and (limit < 0 or len(out) < limit):
            want = -1 if limit < 0 else limit - len(out)
            piece = self._piece(want)
            if not piece:
                break
            out += piece
        return bytes(out)

    def _piece(self, want: int) -> bytes:
        if self.chunked:
            if self.chunk_left == 0:
                line = self.stream.readline(MAX_HEADER_LINE)
                size = line.split(b";", 1)[0].strip()
                # hex digits only: int(..., 16) also takes "-5", "+5", "0x5" and "5_0",
                # and a negative size would turn a bounded read into read-to-the-end
                if not _HEX.fullmatch(size):
                    raise HttpError(f"bad chunk size line {line[:40]!r}")
                self.chunk_left = int(size, 16)
                if self.chunk_left == 0:
                    while self.stream.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    return b""
            n = self.chunk_left if want < 0 else min(want, self.chunk_left)
            data = self._exact(n)
            self.chunk_left -= len(data)
            if self.chunk_left == 0:
                self.stream.readline(MAX_HEADER_LINE)  # CRLF after the chunk
            return data
        if self.remaining is not None:
            n = self.remaining if want < 0 else min(want, self.remaining)
            data = self._exact(n)
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        data = self.stream.read(want if want >= 0 else -1) if want != 0 else b""
        if not data:
            self.done = True
        return data

    def _exact(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) < n:
            raise HttpError(f"connection closed {n - len(data)} bytes before the body's end")
        return data

    def close(self) -> None:
        self.done = True
        self.stream.close()
        self.sock.close()


def get(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    private: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    connect: Mapping[str, str] | None = None,
) -> Response:
    """GET ``url``, following redirects; any status comes back (the caller judges it).

    ``connect`` maps a host name to the address to dial instead of resolving it (an SRV
    target already resolved by ``guest.agent.srv``); the name still goes in ``Host`` and
    TLS SNI, so certificates are checked against it.
    """
    send_private = dict(private or {})
    for _ in range(MAX_REDIRECTS + 1):
        headers_now = {**(headers or {}), **send_private}
        response = _request(url, headers_now, timeout, ssl_context, connect or {})
        location = response.header("location")
        if response.status not in REDIRECTS or not location:
            return response
        response.close()
        url = urljoin(url, location)
        send_private = {}
    raise HttpError(f"more than {MAX_REDIRECTS} redirects")


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` (which may hold secrets) to ``url`` only: a redirect is not followed,
    it comes back as the answer, so the body never reaches another host."""
    return _request(url, headers, timeout, ssl_context, {}, method="POST", body=body)


def _request(
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    ssl_context: ssl.SSLContext | None,
    connect: Mapping[str, str],
    *,
    method: str = "GET",
    body: bytes = b"",
) -> Response:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = connect.get(host, host)
    # An ASCII name or address goes to getaddrinfo as bytes: as str it is run through the
    # idna codec, whose import costs ~35 ms per boot under TCG (plain-http registries,
    # as the dev loop's; https imports it anyway, for the TLS server name). Typeshed
    # says str, but getaddrinfo, which create_connection calls, takes bytes as well.
    wire = address.encode("ascii") if address.isascii() else address
    sock = socket.create_connection((wire, port), timeout=timeout)  # type: ignore[arg-type]
    try:
        if parts.scheme == "https":
            import ssl

            context = ssl_context or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=host)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{host}]" if ":" in host else host
        if parts.port:
            host_header += f":{parts.port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close",
                 "User-Agent: cloud-boot-init (python)", "Accept-Encoding: identity"]  # fmt: skip
        if method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        stream = sock.makefile("rb")
        status, reason, fields = _read_head(stream)
    except BaseException:
        sock.close()
        raise
    length_text = fields.get("content-length")
    chunked = "chunked" in fields.get("transfer-encoding", "").lower()
    if not chunked and length_text is not None and not _DECIMAL.fullmatch(length_text):
        sock.close()
        raise HttpError(f"bad Content-Length {length_text[:20]!r}")
    length = None if chunked or length_text is None else int(length_text)
    return Response(url, status, reason, fields, _Body(stream, sock, length, chunked))


def redact_url(url: str) -> str:
    """``url`` as logs and errors may show it: no userinfo, query or fragment (a metadata
    URL's query often carries a token, and a registry URL may carry a password)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host or ''}{port}{parts.path}"


def _read_head(stream: BinaryIO) -> tuple[int, str, dict[str, str]]:
    status_line = stream.readline(MAX_HEADER_LINE).decode("latin-1").rstrip("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise HttpError(f"not an HTTP response: {status_line[:60]!r}")
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = stream.readline(MAX_HEADER_LINE).decode("latin-1").rstrip("\r\n")
        if not line:
            return int(code), reason, fields
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()
    raise HttpError(f"more than {MAX_HEADERS} header lines")
