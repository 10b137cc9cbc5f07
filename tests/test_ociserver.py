"""The builtin registry (publisher.ociserver) checked with the tools the suite uses on
docker-registry: skopeo copy/inspect, our publisher's push and verify, the guest agent's
pull client, plus raw HTTP for HEAD, ranges, chunked uploads, digests and tag paging.

Every test here runs the server as ``cloudboot up`` does on a Mac: a separate process
started through ``local_registry(implementation="builtin")``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from guest.agent import fetch, pulls
from guest.contract import oci
from guest.contract.oci import MEDIA_MANIFEST, Descriptor, Manifest, digest_of, parse_ref
from guest.contract.pubkey import load_public_key
from publisher.localregistry import (
    RunningRegistry,
    free_port,
    local_registry,
    pick_implementation,
)
from publisher.ociserver import make_server
from publisher.push import publish_plan, push_artifact, push_index
from publisher.refsign import verify_ref
from publisher.registry import RegistryClient
from publisher.signing import generate_key_pair, parse_private_key
from tests.helpers import CLOUDBOOT

PLAN = 'default_target = "a"\ntarget "a" {\n  kernel = "127.0.0.1:5000/k:1"\n}\n'


@pytest.fixture
def builtin(tmp_path: Path) -> Iterator[RunningRegistry]:
    with local_registry(tmp_path / "reg", implementation="builtin") as reg:
        yield reg


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_publisher_push_sign_verify_and_guest_pull(
    builtin: RunningRegistry, tmp_path: Path
) -> None:
    assert builtin.implementation == "builtin"
    private_pem, public_pem = generate_key_pair(b"")
    key = parse_private_key(private_pem, b"")
    plan = tmp_path / "default.hcl"
    plan.write_text(PLAN)
    ref = parse_ref(f"{builtin.address}/cloudboot/default:latest")
    client = RegistryClient(chunk_size=64 * 1024)
    first = publish_plan(client, ref, plan, key)
    again = publish_plan(RegistryClient(), ref, plan, key)  # fresh client: HEADs find it all
    assert first.uploaded and not again.uploaded and again.digest == first.digest
    verify_ref(RegistryClient(), ref, load_public_key(public_pem))
    # a multi-arch kernel artifact with a large (chunked) layer, then an index over it
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bytes(range(256)) * 1200)
    per_arch = []
    for arch in ("amd64", "arm64"):
        arch_ref = parse_ref(f"{builtin.address}/k/cloud:{arch}")
        pushed = push_artifact(client, arch_ref, arch, kernel, cmdline=f"console={arch}")
        per_arch.append((arch, arch_ref.with_digest(pushed.digest)))
    index_ref = parse_ref(f"{builtin.address}/k/multi:1")
    push_index(client, index_ref, per_arch, key)  # cross-repository mounts
    guest = fetch.RegistryClient(insecure=True)
    resolved, text = pulls.pull_plan(guest, parse_ref(str(ref)), "amd64")
    assert text == PLAN.encode() and resolved.top_digest == first.digest
    boot = guest.resolve(parse_ref(str(index_ref)), "arm64")
    layer = boot.manifest.layer(oci.LayerRole.KERNEL)
    assert guest.blob(parse_ref(str(index_ref)), layer, limit=1 << 30) == kernel.read_bytes()


def test_skopeo_copy_and_inspect(builtin: RunningRegistry, tmp_path: Path) -> None:
    client = RegistryClient()
    ref = parse_ref(f"{builtin.address}/src/plan:v1")
    plan = tmp_path / "p.hcl"
    plan.write_text(PLAN)
    pushed = publish_plan(client, ref, plan)

    def skopeo(*args: str) -> str:
        return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert sha(raw.encode()) == pushed.digest
    # skopeo pushes with its own client (chunked PATCH without a length) and reads back
    oci_dir = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci_dir}:v1")
    dest = f"{builtin.address}/copied/plan:v2"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{oci_dir}:v1", f"docker://{dest}")
    copied = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert sha(copied.encode()) == pushed.digest
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{dest[:-3]}"))
    assert tags["Tags"] == ["v2"]


def test_http_head_ranges_chunked_uploads_and_errors(builtin: RunningRegistry) -> None:
    base = f"{builtin.url}/v2"
    assert requests.get(f"{base}/").status_code == 200
    data = bytes(range(256)) * 40
    digest = sha(data)
    # chunked: POST, two PATCHes with Content-Range, PUT with the digest
    start = requests.post(f"{base}/r/blobs/uploads/")
    assert start.status_code == 202
    location = builtin.url + start.headers["Location"]
    first = requests.patch(location, data=data[:4000], headers={"Content-Range": "0-3999"})
    assert first.status_code == 202 and first.headers["Range"] == "0-3999"
    bad = requests.patch(location, data=b"x", headers={"Content-Range": "10-10"})
    assert bad.status_code == 416  # not where the upload ends
    requests.patch(location, data=iter([data[4000:8000], data[8000:]]))  # chunked encoding
    wrong = requests.put(location, params={"digest": sha(b"other")})
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert requests.head(f"{base}/r/blobs/{digest}").status_code == 404  # nothing kept
    mono = requests.post(f"{base}/r/blobs/uploads/", params={"digest": digest}, data=data)
    assert mono.status_code == 201 and mono.headers["Docker-Content-Digest"] == digest
    head = requests.head(f"{base}/r/blobs/{digest}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    part = requests.get(f"{base}/r/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = requests.get(f"{base}/r/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]
    beyond = requests.get(f"{base}/r/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert requests.head(f"{base}/other/blobs/{digest}").status_code == 404  # per repository
    # manifests: unknown blobs refused; by tag and digest with their content type
    manifest = bytes(Manifest(Descriptor("a/b", digest, len(data)), ()))
    missing = bytes(Manifest(Descriptor("a/b", sha(b"gone"), 4), ()))
    refused = requests.put(f"{base}/r/manifests/t", data=missing,
                           headers={"Content-Type": MEDIA_MANIFEST})  # fmt: skip
    assert refused.status_code == 400 and "BLOB_UNKNOWN" in refused.text
    put = requests.put(f"{base}/r/manifests/t0", data=manifest,
                       headers={"Content-Type": MEDIA_MANIFEST})  # fmt: skip
    assert put.status_code == 201 and put.headers["Docker-Content-Digest"] == digest_of(manifest)
    for reference in ("t0", digest_of(manifest)):
        got = requests.get(f"{base}/r/manifests/{reference}")
        assert got.content == manifest and got.headers["Content-Type"] == MEDIA_MANIFEST
    mismatch = requests.put(f"{base}/r/manifests/{sha(b'x')}", data=manifest,
                            headers={"Content-Type": MEDIA_MANIFEST})  # fmt: skip
    assert mismatch.status_code == 400
    assert requests.get(f"{base}/r/manifests/nope").status_code == 404
    assert requests.get(f"{base}/UPPER/manifests/t0").status_code == 400  # NAME_INVALID
    # tag list with pagination (as our client and skopeo follow it)
    for n in range(1, 5):
        requests.put(f"{base}/r/manifests/t{n}", data=manifest,
                     headers={"Content-Type": MEDIA_MANIFEST})  # fmt: skip
    page = requests.get(f"{base}/r/tags/list", params={"n": 2})
    assert page.json()["tags"] == ["t0", "t1"] and 'rel="next"' in page.headers["Link"]
    rest = requests.get(builtin.url + page.headers["Link"].split(">")[0].lstrip("<"))
    assert rest.json()["tags"] == ["t2", "t3"]
    assert RegistryClient().list_tags(parse_ref(f"{builtin.address}/r")) == [
        f"t{n}" for n in range(5)
    ]
    # delete by digest drops the manifest and its tags
    assert requests.delete(f"{base}/r/manifests/{digest_of(manifest)}").status_code == 202
    assert requests.get(f"{base}/r/manifests/t0").status_code == 404


def test_malformed_chunked_body_is_a_400(builtin: RunningRegistry) -> None:
    location = requests.post(f"{builtin.url}/v2/r/blobs/uploads/").headers["Location"]
    with socket.create_connection((builtin.host, builtin.port), timeout=10) as sock:
        sock.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode())  # fmt: skip
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after it
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"BAD_REQUEST" in answer
    assert requests.get(f"{builtin.url}/v2/").status_code == 200  # still serving


def test_loopback_only_and_auto_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="loopback"):
        make_server(tmp_path, "0.0.0.0", 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker-registry here
    assert pick_implementation("auto") == "builtin"
    monkeypatch.undo()
    assert pick_implementation("docker-registry") == "docker-registry"


def test_cli_registry_serve_builtin(tmp_path: Path) -> None:
    """`registry serve --server builtin` serves the workspace storage; SIGTERM ends it."""
    port = free_port()
    (tmp_path / "cloudboot.toml").write_text(f'[registry]\nurl = "127.0.0.1:{port}"\n')
    proc = subprocess.Popen([str(CLOUDBOOT), "-C", str(tmp_path), "registry", "serve", "--server",
                             "builtin"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"registry (builtin) serving at http://127.0.0.1:{port}")
        assert requests.get(f"http://127.0.0.1:{port}/v2/").status_code == 200
        assert (tmp_path / ".cloudboot" / "registry").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
