"""HTTP servers that are not registries: one status and content type for every request.

What no real registry does (a web server answering ``200 text/html`` to everything, a
501, a 503 that never ends) has to be played by something; these are the smallest
stand-ins, used by the CLI tests to show such a server is never taken for a registry.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


def _handler(status: int, content_type: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"<html><body>hello</body></html>" if status == 200 else b""
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def fake_server(status: int, content_type: str = "text/html") -> Iterator[str]:
    """An HTTP server answering ``status`` to every request; yields host:port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(status, content_type))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
