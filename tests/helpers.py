"""Helpers the tests share (one module; test files never import each other).

- paths and waiting: ``REPO``, ``CLOUDBOOT``, :func:`wait_for` (the one polling loop; its
  timeout only guards against a hang, it is never a speed claim);
- keys: :func:`load_private_key`;
- the watcher: simple but real stages (``FilePlanStage`` parses the plan with the real
  HCL parser, so an error carries file:line:col, and writes the published bytes
  atomically, keyed by sha256; ``FileBuildStage`` concatenates kernel/ into an "image";
  ``FileVmStage`` records restarts; they count calls and can be held at a gate) and a
  daemon runner; a signed workspace and skopeo checks (an independent client);
- VMs: a ``VmSpec`` for throw-away disks, marker variables in a vars file
  (virt-firmware), the ``cloudboot vm`` command line on a workspace;
- raw distribution-spec pushing, independent of publisher/, for the guest's pull client.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hcl2
import lark
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from virt.firmware.varstore.edk2 import Edk2VarStore

from guest.contract import cosign, oci
from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError, Location
from guest.contract.fsutil import write_atomic
from publisher.config import Accel, Backend
from publisher.ignore import IgnoreRules
from publisher.run import run
from publisher.signing import SigningKey, parse_private_key
from publisher.workspace import PlanOutcome
from watcher.vm import VmSpec
from watcher.watch.daemon import WatchDaemon, WatchSetup
from watcher.watch.outcomes import BuildOutcome
from watcher.watch.pipeline import VmStage
from watcher.watch.status import StatusBook

REPO = Path(__file__).resolve().parent.parent
CLOUDBOOT = Path(sys.executable).parent / "cloudboot"


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``condition`` (often, then every 0.2 s) until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def load_private_key(path: Path, password: bytes | None) -> SigningKey:
    """A key file with an explicit password (the product asks $COSIGN_PASSWORD or a tty)."""
    return parse_private_key(path.read_bytes(), password, source=str(path))


# --- the watcher --------------------------------------------------------------------------


class FilePlanStage:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.calls: list[tuple[str, bytes]] = []
        self.prepared: list[tuple[str, bytes]] = []  # what the daemon asked to start early
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.order: list[str] | None = None

    def ref_for(self, plan: Path) -> str:
        return f"file://{self.out}/{plan.stem}"

    def prepare(self, plan: Path) -> None:
        self.prepared.append((plan.name, plan.read_bytes()))

    def publish(self, plan: Path) -> PlanOutcome:
        data = plan.read_bytes()
        self.calls.append((plan.name, data))
        if self.order is not None:
            self.order.append(f"plan:{plan.name}")
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        try:
            hcl2.loads(data.decode())
        except lark.exceptions.UnexpectedInput as exc:
            raise CloudbootError(
                "invalid plan", where=Location(str(plan), exc.line, exc.column)
            ) from None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.out / plan.stem
        # Like a registry whose tag already points at this signed digest: nothing uploaded.
        uploaded = not (target.is_file() and target.read_bytes() == data)
        write_atomic(target, data)
        return PlanOutcome(self.ref_for(plan), digest, uploaded=uploaded)


class FileBuildStage:
    def __init__(self, kernel: Path, iso: Path) -> None:
        self.kernel = kernel
        self.iso = iso
        self.calls = 0
        self.order: list[str] | None = None

    def build(self) -> BuildOutcome:
        self.calls += 1
        if self.order is not None:
            self.order.append("kernel")
        files = sorted(p for p in self.kernel.rglob("*") if p.is_file())
        if any(p.read_bytes().startswith(b"FAIL") for p in files):
            raise CloudbootError("recipe is broken", where=Location(str(files[0]), 1, 1))
        image = b"".join(p.read_bytes() for p in files)
        old = self.iso.read_bytes() if self.iso.exists() else None
        write_atomic(self.iso, image)
        return BuildOutcome(self.iso, changed=old != image)


class FileVmStage:
    def __init__(self) -> None:
        self.restarts = 0
        self.running = False
        self.started_by_watcher = False
        self.stopped = 0
        self.order: list[str] | None = None

    def restart(self) -> str:
        if not self.running:
            self.started_by_watcher = True
        self.running = True
        self.restarts += 1
        if self.order is not None:
            self.order.append("vm")
        return "running"

    def state(self) -> str:
        return "running" if self.running else "stopped"

    def shutdown(self) -> None:
        if self.started_by_watcher:
            self.running = False
            self.stopped += 1


def make_workspace(root: Path) -> Path:
    (root / "plans").mkdir(parents=True)
    (root / "kernel").mkdir()
    (root / "plans" / "demo.hcl").write_text('default_target = "a"\n')
    (root / "kernel" / "recipe.toml").write_text("arch = 'x86_64'\n")
    return root


@contextmanager
def running_daemon(
    root: Path,
    plan_stage: FilePlanStage | None,
    build_stage: FileBuildStage | None = None,
    vm_stage: VmStage | None = None,
    *,
    window: float = 0.1,
    initial_run: bool = False,
    prepare_ahead: bool = True,
) -> Iterator[WatchDaemon]:
    setup = WatchSetup(
        root=root,
        plans_dir=root / "plans",
        kernel_dir=root / "kernel",
        window=window,
        rules=IgnoreRules.for_workspace(root),
        plan_stage=plan_stage,
        build_stage=build_stage,
        prepare_ahead=prepare_ahead,
    )
    status = StatusBook(root / ".cloudboot" / "status.json", watching=["plans/", "kernel/"])
    daemon = WatchDaemon(setup, status, vm_stage=vm_stage, initial_run=initial_run)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    # idle: the observer runs (the worker starts inside it) and the first run is done
    wait_for(lambda: status.data["state"] == "idle", what="watcher idle")
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive()


PLAN = """default_target = "a"

target "a" {
  kernel  = "127.0.0.1:1/k:1"
  cmdline = ["console=ttyS0", "v=1"]
}
"""


def write_signed_workspace(root: Path, registry: str, password: str = "pw") -> bytes:
    """A workspace whose config points plans at ``registry``; returns the public key PEM.

    The private key is encrypted as cosign writes it; the caller sets COSIGN_PASSWORD.
    """
    from publisher.signing import generate_key_pair

    make_workspace(root)
    (root / "plans" / "demo.hcl").write_text(PLAN)
    private, public = generate_key_pair(password.encode())
    (root / "cosign.key").write_bytes(private)
    (root / "cosign.pub").write_bytes(public)
    (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{registry}"\n')
    return public


def skopeo_digest(ref: str) -> str | None:
    """The digest a tag points at, as skopeo (an independent client) sees it."""
    import json

    from publisher.run import run

    proc = run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=False)
    if proc.returncode != 0:
        return None
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest() if json.loads(proc.stdout) else None


def skopeo_signature_ok(ref_name: str, digest: str, public_pem: bytes) -> bool:
    """Fetch ``sha256-<hex>.sig`` with skopeo and check the ECDSA signature with cryptography."""
    return bool(skopeo_signatures(ref_name, digest, public_pem))


def skopeo_signatures(ref_name: str, digest: str, public_pem: bytes) -> list[dict[str, Any]]:
    """The payloads at ``sha256-<hex>.sig`` (fetched with skopeo) that ``public_pem`` signed
    for ``digest``, checked with cryptography: an independent view of what a guest reads.
    """
    import base64
    import json
    import tempfile

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from publisher.run import run

    tag = digest.replace(":", "-") + ".sig"
    found = []
    with tempfile.TemporaryDirectory() as out:
        proc = run(
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                f"docker://{ref_name}:{tag}",
                f"dir:{out}",
            ],
            check=False,
        )
        if proc.returncode != 0:
            return []
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        key = serialization.load_pem_public_key(public_pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        for layer in manifest["layers"]:
            payload = (Path(out) / layer["digest"].split(":")[1]).read_bytes()
            doc = json.loads(payload)
            sig = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
            try:
                key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            if doc["critical"]["image"]["docker-manifest-digest"] == digest:
                found.append(doc)
    return found


# --- VMs -----------------------------------------------------------------------------------

STANDIN = REPO / "tests" / "vfkit_standin" / "vfkit"
MARKER = "CloudbootTestMarker"
#: What a guest that ignores ACPI (firmware, our agent) gets before the hard stop.
STOP_TIMEOUT = 1.0


def make_spec(root: Path, kind: Backend) -> VmSpec:
    (root / "boot.iso").write_bytes(bytes(1 << 20))
    (root / "cache.raw").write_bytes(bytes(1 << 20))
    state_dir = root / "vm"
    return VmSpec(
        arch=Arch.host(),
        cpus=1,
        memory_mib=256,
        iso=root / "boot.iso",
        cache_disk=root / "cache.raw",
        disks=(),
        mac="52:54:00:c1:0b:01",
        gui=False,
        nvram=state_dir / "nvram.fd",
        serial_log=state_dir / "serial.log",
        state_dir=state_dir,
        backend=kind,
        accel=Accel.TCG,
    )


def set_marker(store: Path) -> None:
    vars_file = Edk2VarStore(str(store))
    varlist = vars_file.get_varlist()
    varlist.set_uint32(MARKER, 0xC10B)
    vars_file.write_varstore(str(store), varlist)


def has_marker(store: Path) -> bool:
    return MARKER in Edk2VarStore(str(store)).get_varlist()


def vm_workspace(root: Path) -> Path:
    (root / "build").mkdir()
    (root / "build/boot.iso").write_bytes(bytes(1 << 20))
    (root / "build/menu-cache.raw").write_bytes(bytes(1 << 20))
    (root / "cloudboot.toml").write_text(
        '[vm]\nbackend = "qemu"\naccel = "tcg"\ncpus = 1\nmemory_mib = 256\nstate_dir = "vm"\n'
    )
    return root


def vm_cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run([CLOUDBOOT, "-C", root, "--log-format", "json", "vm", *args], check=check)


# --- raw distribution-spec pushing (independent of publisher/) -----------------------------


def _request(
    url: str,
    method: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, context=context) as resp:
        return resp.status, dict(resp.headers)


def push_blob(
    base: str,
    repo: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> oci.Descriptor:
    digest = oci.digest_of(data)
    _status, got = _request(f"{base}/v2/{repo}/blobs/uploads/", "POST", b"", headers, context)
    location = got["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    _request(
        f"{location}{sep}digest={digest}",
        "PUT",
        data,
        {**(headers or {}), "Content-Type": "application/octet-stream"},
        context,
    )
    return oci.Descriptor("application/octet-stream", digest, len(data))


def push_manifest(
    base: str,
    repo: str,
    reference: str,
    data: bytes,
    media_type: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> str:
    _request(
        f"{base}/v2/{repo}/manifests/{reference}",
        "PUT",
        data,
        {**(headers or {}), "Content-Type": media_type},
        context,
    )
    return oci.digest_of(data)


def push_plan(base: str, repo: str, tag: str, plan: bytes, **kw: object) -> str:
    manifest, config = oci.plan_manifest(plan, "plan.hcl")
    push_blob(base, repo, config, **kw)  # type: ignore[arg-type]
    push_blob(base, repo, plan, **kw)  # type: ignore[arg-type]
    return push_manifest(base, repo, tag, bytes(manifest), oci.MEDIA_MANIFEST, **kw)  # type: ignore[arg-type]


def new_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem


def sign(
    base: str,
    repo: str,
    identity: str,
    digest: str,
    key: ec.EllipticCurvePrivateKey,
    payload: bytes | None = None,
    **kw: object,
) -> None:
    """Push a cosign signature of ``digest``; ``kw`` as ``push_blob`` takes (auth, TLS)."""
    data = payload or cosign.payload(identity, digest)
    sig = base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    manifest, config = cosign.signature_manifest([(data, sig)])
    push_blob(base, repo, config, **kw)  # type: ignore[arg-type]
    push_blob(base, repo, data, **kw)  # type: ignore[arg-type]
    tag = cosign.signature_tag(digest)
    push_manifest(base, repo, tag, bytes(manifest), oci.MEDIA_MANIFEST, **kw)  # type: ignore[arg-type]
