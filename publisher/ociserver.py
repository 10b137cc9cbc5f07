"""The builtin registry: a small OCI distribution server for the embedded default only.

Homebrew has no OCI registry server (see docs/wire-formats.md §6), so on a Mac the
embedded registry of ``cloudboot up`` is this one: pure Python (``http.server``),
filesystem storage (``publisher.ocistore``), bound to loopback only and without auth,
which is why it refuses any other address. Production registries stay real ones; the
tests run the same tools against this server as against docker-registry (skopeo, our
publisher and the guest's pull client).

What it serves (distribution spec v1.1 endpoints): ``/v2/``; blobs HEAD/GET with single
byte ranges; monolithic (POST ``?digest=``, or POST then PUT) and chunked (PATCH with
``Content-Range``, chunked transfer encoding too) uploads, digests verified on commit;
cross-repository mounts; manifests HEAD/GET/PUT/DELETE by tag and digest with their
content types; ``tags/list`` with ``n``/``last`` pagination and a ``Link`` header;
blob DELETE.

Run it with ``python -m publisher.ociserver --root DIR --port N`` (what
``publisher.localregistry`` spawns).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from publisher.ocistore import MAX_MANIFEST, Store, StoreError, copy_limited

_ROUTE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:(?P<kind>blobs|manifests)/(?P<ref>[^/]+)|blobs/uploads/(?P<upload>[^/]*)"
    r"|(?P<tags>tags/list))$"
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cloudboot-ociserver/1"
    store: Store  # set on the subclass made by ``make_server``
    timeout = 60  # seconds a client may stall mid-request before its socket is closed
    consumed = False  # the request body has been read

    # --- plumbing ----------------------------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, exc: StoreError) -> None:
        doc = {"errors": [{"code": exc.code, "message": exc.message, "detail": None}]}
        self._send(exc.status, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _body(self) -> Iterator[bytes]:
        """The request body, whether sized or in chunked transfer encoding (read once)."""
        if self.consumed:
            return
        self.consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from copy_limited(self.rfile, size)
                self.rfile.readline()
        else:
            yield from copy_limited(self.rfile, int(self.headers.get("Content-Length") or 0))

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.query = dict(urllib.parse.parse_qsl(url.query))
        self.consumed = False
        try:
            if url.path in ("/v2", "/v2/"):
                self._send(200, b"{}", {"Content-Type": "application/json"})
                return
            match = _ROUTE.match(url.path)
            if match is None:
                raise StoreError(404, "NOT_FOUND", f"no such endpoint {url.path}")
            name = match["name"]
            handler = {
                "blobs": self._blobs,
                "manifests": self._manifests,
            }.get(match["kind"] or "")
            if handler is not None:
                handler(name, match["ref"])
            elif match["tags"]:
                self._tags(name)
            else:
                self._uploads(name, match["upload"])
        except StoreError as exc:
            self._drain()
            self.close_connection = self.command in ("PUT", "PATCH", "POST")  # body may be left
            self._error(exc)
        except ValueError as exc:  # a malformed number: chunk size, Content-Range, Length
            self.close_connection = True
            self._error(StoreError(400, "BAD_REQUEST", f"malformed request: {exc}"))

    def _drain(self) -> None:
        if self.command in ("PUT", "PATCH", "POST"):
            for _ in self._body():
                pass

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _route

    # --- endpoints ---------------------------------------------------------------------

    def _blobs(self, name: str, digest: str) -> None:
        if self.command == "DELETE":
            self.store.delete_blob(name, digest)
            self._send(202)
            return
        if self.command not in ("GET", "HEAD"):
            raise StoreError(405, "UNSUPPORTED", f"{self.command} on a blob")
        path = self.store.blob(name, digest)
        size = path.stat().st_size
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}  # fmt: skip
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or not (match[1] or match[2]):
                raise StoreError(416, "RANGE_INVALID", f"unsupported Range {wanted!r}")
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            else:  # a suffix: the last N bytes
                start = max(size - int(match[2]), 0)
            if start >= size or start > end:
                raise StoreError(416, "RANGE_INVALID", f"range {wanted} outside {size} bytes")
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            status = 206
        self._send(status, headers=headers, length=end - start + 1)
        if self.command == "GET":
            with path.open("rb") as src:
                src.seek(start)
                for chunk in copy_limited(src, end - start + 1):
                    self.wfile.write(chunk)

    def _location(self, name: str, upload: str, size: int) -> dict[str, str]:
        return {"Location": f"/v2/{name}/blobs/uploads/{upload}", "Docker-Upload-UUID": upload,
                "Range": f"0-{max(size - 1, 0)}"}  # fmt: skip

    def _committed(self, name: str, digest: str) -> None:
        self._send(201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                 "Docker-Content-Digest": digest})  # fmt: skip

    def _uploads(self, name: str, upload: str) -> None:
        store = self.store
        if self.command == "POST" and not upload:
            mount, source = self.query.get("mount"), self.query.get("from")
            if mount and source and store.mount(name, mount, source):
                self._drain()
                self._committed(name, mount)
                return
            session = store.start_upload(name)
            digest = self.query.get("digest")
            size = store.append(session, self._body(), None)
            if digest:  # monolithic: the whole blob in the POST
                store.finish(name, session, digest)
                self._committed(name, digest)
            else:
                self._send(202, headers=self._location(name, session, size))
            return
        if self.command == "PATCH":
            content_range = self.headers.get("Content-Range")
            start = int(content_range.split("-")[0]) if content_range else None
            size = store.append(upload, self._body(), start)
            self._send(202, headers=self._location(name, upload, size))
        elif self.command == "PUT":
            digest = self.query.get("digest")
            if not digest:
                raise StoreError(400, "DIGEST_INVALID", "PUT of an upload needs ?digest=")
            store.append(upload, self._body(), None)
            store.finish(name, upload, digest)
            self._committed(name, digest)
        elif self.command == "GET":
            size = store.upload_path(upload).stat().st_size
            self._send(204, headers=self._location(name, upload, size))
        elif self.command == "DELETE":
            store.cancel(upload)
            self._send(204)
        else:
            raise StoreError(405, "UNSUPPORTED", f"{self.command} on an upload")

    def _manifests(self, name: str, reference: str) -> None:
        store = self.store
        if self.command == "PUT":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_MANIFEST or "chunked" in self.headers.get("Transfer-Encoding", ""):
                raise StoreError(413, "SIZE_INVALID", f"manifest over {MAX_MANIFEST} bytes")
            data = b"".join(self._body())
            media_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            digest = store.put_manifest(name, reference, data, media_type)
            self._send(201, headers={"Location": f"/v2/{name}/manifests/{digest}",
                                     "Docker-Content-Digest": digest})  # fmt: skip
        elif self.command in ("GET", "HEAD"):
            found = store.manifest(name, reference)
            data = found.path.read_bytes()
            self._send(200, data, {"Content-Type": found.media_type,
                                   "Docker-Content-Digest": found.digest,
                                   "ETag": f'"{found.digest}"'})  # fmt: skip
        elif self.command == "DELETE":
            store.delete_manifest(name, reference)
            self._send(202)
        else:
            raise StoreError(405, "UNSUPPORTED", f"{self.command} on a manifest")

    def _tags(self, name: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise StoreError(405, "UNSUPPORTED", f"{self.command} on tags/list")
        tags = self.store.tags(name)
        last = self.query.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {"Content-Type": "application/json"}
        count = self.query.get("n")
        if count is not None:
            if not count.isdigit():
                raise StoreError(400, "PAGINATION_NUMBER_INVALID", f"invalid n={count!r}")
            more = len(tags) > int(count)
            tags = tags[: int(count)]
            if more and tags:
                query = urllib.parse.urlencode({"n": count, "last": tags[-1]})
                headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
        self._send(200, json.dumps({"name": name, "tags": tags}).encode(), headers)


def make_server(root: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A server on ``host:port`` (loopback only) storing under ``root``; not yet serving."""
    if not is_loopback(host):
        raise ValueError(f"the builtin registry only listens on loopback, not {host!r}")
    handler = type("BoundHandler", (Handler,), {"store": Store(root)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m publisher.ociserver", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="storage directory")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    try:
        server = make_server(args.root, args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"ociserver: {exc}", file=sys.stderr)
        return 1
    print(f"ociserver: serving {args.root} on {args.host}:{args.port}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
