"""Fault injection for registry tests: a real HTTP reverse proxy, and a reader of the tag.

``faulty_proxy(registry)`` runs a threaded stdlib HTTP server on a free loopback port that
forwards every request to a real docker-registry (``http.client``, Host header kept so the
registry's upload ``Location`` URLs point back through the proxy). Tests tell it to answer
the next N requests matching a method and path pattern with a status (503, 500, 429 with
``Retry-After``, 408, 4xx), or to drop the connection, before or after the registry saw the
request. Everything the proxy answered is recorded, injected or not.

``watch_tag(...)`` is an independent reader on another thread that asks the registry
directly, over and over, whether the tag points at a manifest whose blobs and signature
are all present: the publish order guarantee, checked from the outside.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import requests

from guest.contract import cosign
from guest.contract.oci import MANIFEST_ACCEPT, Manifest, digest_of
from publisher.localregistry import RunningRegistry
from tests.httpserve import serving

#: Close the connection without an answer; the registry never sees the request.
DROP = "drop"
#: Forward the request (the registry acts on it), then close without passing the answer on.
DROP_AFTER = "drop-after"

Answer = int | Literal["drop", "drop-after"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class FaultRule:
    """Answer the next ``remaining`` matching requests with ``answer`` (-1: forever)."""

    method: str  # "PUT", "HEAD" ... or "*"
    path: re.Pattern[str]
    answer: Answer
    remaining: int
    retry_after: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining != 0
            and self.method in ("*", method)
            and self.path.search(path) is not None
        )


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int  # what the client got; 0 when the connection was dropped
    injected: bool


@dataclass
class FaultyProxy:
    upstream: RunningRegistry
    address: str = ""
    rules: list[FaultRule] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self,
        method: str,
        path: str,
        answer: Answer,
        *,
        times: int = 1,
        retry_after: str | None = None,
    ) -> FaultRule:
        """Inject ``answer`` for the next ``times`` requests whose path matches ``path``."""
        rule = FaultRule(method.upper(), re.compile(path), answer, times, retry_after)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule that applies to this request, its budget charged."""
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.remaining -= 1 if rule.remaining > 0 else 0
                    rule.hits += 1
                    return rule
        return None

    def record(self, method: str, path: str, status: int, injected: bool) -> None:
        with self.lock:
            self.exchanges.append(Exchange(method, path, status, injected))

    def seen(self, method: str, path: str) -> list[Exchange]:
        pattern = re.compile(path)
        with self.lock:
            return [e for e in self.exchanges if e.method == method and pattern.search(e.path)]


class _Handler(http.server.BaseHTTPRequestHandler):
    proxy: FaultyProxy  # set on the per-proxy subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        up = self.proxy.upstream
        conn = http.client.HTTPConnection(up.host, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = []
            for name, value in resp.getheaders():
                if name.lower() in _HOP_BY_HOP:
                    continue
                if name.lower() == "content-length" and self.command != "HEAD":
                    continue  # recomputed below; HEAD keeps the resource's length
                out.append((name, value.replace(up.url, f"http://{self.proxy.address}")))
            if self.command != "HEAD":
                out.append(("Content-Length", str(len(data))))
            return resp.status, out, data
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._read_body()
        rule = self.proxy.take(self.command, self.path)
        if rule is not None and rule.answer == DROP:
            self.proxy.record(self.command, self.path, 0, True)
            self._drop()
            return
        if rule is not None and rule.answer != DROP_AFTER:
            assert isinstance(rule.answer, int)
            error = {"errors": [{"code": "INJECTED", "message": "fault injected by test proxy"}]}
            payload = json.dumps(error).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
            if rule.retry_after is not None:
                headers.append(("Retry-After", rule.retry_after))
            self.proxy.record(self.command, self.path, rule.answer, True)
            self._answer(rule.answer, headers, payload)
            return
        try:
            status, headers, data = self._forward(body)
        except OSError:  # the registry itself is down: look like it to the client
            self.proxy.record(self.command, self.path, 0, False)
            self._drop()
            return
        if rule is not None:  # DROP_AFTER: the registry acted, the client never hears
            self.proxy.record(self.command, self.path, 0, True)
            self._drop()
            return
        self.proxy.record(self.command, self.path, status, False)
        self._answer(status, headers, data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


@contextlib.contextmanager
def faulty_proxy(upstream: RunningRegistry) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of ``upstream`` (plain HTTP) until the block ends."""
    proxy = FaultyProxy(upstream)
    handler = type("FaultyHandler", (_Handler,), {"proxy": proxy})
    with serving(handler, "faulty-proxy") as port:
        proxy.address = f"127.0.0.1:{port}"
        yield proxy


@dataclass
class TagWatch:
    """What the reader saw: digests the tag pointed at, and any broken promise."""

    digests: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def _check_tagged(base: str, repo: str, data: bytes) -> list[str]:
    """Problems with a manifest the tag points at: a missing blob or no signature."""
    problems = []
    digest = digest_of(data)
    manifest = Manifest.from_bytes(data)
    for desc in (manifest.config, *manifest.layers):
        h = requests.head(f"{base}/v2/{repo}/blobs/{desc.digest}", timeout=5)
        if h.status_code != 200:
            problems.append(f"tag points at {digest} whose blob {desc.digest} is missing")
    sig_url = f"{base}/v2/{repo}/manifests/{cosign.signature_tag(digest)}"
    sig = requests.get(sig_url, headers={"Accept": MANIFEST_ACCEPT}, timeout=5)
    if sig.status_code != 200:
        problems.append(f"tag points at unsigned manifest {digest}")
        return problems
    for layer in Manifest.from_bytes(sig.content).layers:
        h = requests.head(f"{base}/v2/{repo}/blobs/{layer.digest}", timeout=5)
        if h.status_code != 200:
            problems.append(f"signature of {digest} lacks its payload {layer.digest}")
    return problems


@contextlib.contextmanager
def watch_tag(base: str, repo: str, tag: str, interval: float = 0.01) -> Iterator[TagWatch]:
    """Poll ``base``'s ``repo:tag`` (straight at the registry) on a thread for the block."""
    seen = TagWatch()
    done = threading.Event()

    def look() -> None:
        url = f"{base}/v2/{repo}/manifests/{tag}"
        try:
            r = requests.get(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=5)
            if r.status_code == 200:
                digest = digest_of(r.content)
                if not seen.digests or seen.digests[-1] != digest:
                    seen.digests.append(digest)
                seen.violations += _check_tagged(base, repo, r.content)
        except requests.RequestException:
            pass  # the registry may be down on purpose; keep watching

    def poll() -> None:
        while not done.is_set():
            look()
            time.sleep(interval)

    thread = threading.Thread(target=poll, daemon=True, name="tag-watch")
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        look()  # the state the block left behind counts too
