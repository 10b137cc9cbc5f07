"""The guest agent's host harness: a directory tree as the guest's root, real disk images,
a real registry; only the machine edge (mounts, DHCP, reboot) is swapped (mtools for the
ESP). Shared by tests/test_guest_agent.py and tests/test_guest_trust.py.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guest.agent.cmdline import Options
from guest.agent.console import Console
from guest.agent.disks.mounted import Mounter
from guest.agent.lease import Lease
from guest.agent.lldp import Listener
from guest.agent.machine import Paths
from guest.agent.main import Agent
from guest.agent.stage import CacheEsp, DeviceRuns, EspFiles, FileData
from guest.contract import gpt
from guest.contract.arch import Arch
from guest.contract.efi import GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import CACHE_MARKER, CACHE_MARKER_TEXT
from publisher.run import run

MIB = 1 << 20
KERNEL = os.urandom(2 * MIB + 17)
INITRD = os.urandom(300_000)


def _put_marker(esp: Path) -> None:
    """The marker file `cloudboot cache-disk` writes (here with mtools, independently)."""
    marker = esp.parent / "marker"
    marker.write_bytes(CACHE_MARKER_TEXT)
    run(["mmd", "-i", esp, "::/EFI"], check=False)
    run(["mcopy", "-i", esp, marker, "::/" + CACHE_MARKER.strip("\\").replace("\\", "/")])


class MtoolsEsp:
    """Writes into a FAT image with mcopy: what the guest does through a vfat mount."""

    def __init__(self, image: Path) -> None:
        self.image = image

    def write(self, path: str, data: FileData) -> None:
        parts = [p for p in path.split("\\") if p]
        for i in range(1, len(parts)):
            run(["mmd", "-i", self.image, "::/" + "/".join(parts[:i])], check=False)
        src = self.image.parent / "upload.tmp"
        src.write_bytes(data.read() if isinstance(data, DeviceRuns) else data)
        run(["mcopy", "-o", "-i", self.image, src, "::/" + "/".join(parts)])
        src.unlink()

    def read(self, path: str, limit: int) -> bytes | None:
        parts = [p for p in path.split("\\") if p]
        dest = self.image.parent / "download.tmp"
        done = run(["mcopy", "-o", "-i", self.image, "::/" + "/".join(parts), dest], check=False)
        if done.returncode != 0:
            return None
        data = dest.read_bytes()
        dest.unlink()
        return data if len(data) <= limit else None

    def flush(self) -> None:
        pass


@dataclass
class HostSystem:
    """The machine edge of the agent on the host; everything else in the pass is real."""

    rebooted: bool = False
    esp_opened: list[str] = field(default_factory=list)
    lease: Lease | None = None
    lldp: Listener | None = None  # a stand-in listener, for plans branching on lldp.*

    def prepare(self) -> None:
        pass

    def load_modules(self, listing: Path) -> list[str]:
        return []

    def network_up(self, console: Console) -> Lease | None:
        return self.lease

    def start_lldp(
        self, interface: str, options: Options, arch: str
    ) -> tuple[Listener | None, list[str]]:
        return self.lldp, []

    def ensure_efivars(self, path: Path) -> None:
        assert path.is_dir()

    @contextlib.contextmanager
    def open_esp(self, esp: CacheEsp) -> Iterator[EspFiles]:
        self.esp_opened.append(esp.device.name)
        yield MtoolsEsp(esp.device.node)

    def finish(self) -> None:
        self.rebooted = True

    def wait_forever(self, debug: bool) -> None:
        pass

    def console_fds(self) -> list[int]:
        return []


def _disk(
    root: Path, name: str, parts: list[tuple[str, str, int]], fill: dict[int, Path]
) -> gpt.Gpt:
    """A GPT disk made by sgdisk, exposed as sys/block/<name> + dev/<name><n> files."""
    image = root / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(sum(p[2] for p in parts) * MIB + 2 * MIB)
    args: list[str | Path] = ["sgdisk"]
    for i, (type_code, label, size) in enumerate(parts, 1):
        args += ["-n", f"{i}:0:+{size}M", "-t", f"{i}:{type_code}", "-c", f"{i}:{label}"]
    run([*args, image])
    table = gpt.read_gpt(image.read_bytes()[: 34 * 512])
    (root / "sys/block" / name).mkdir(parents=True)
    (root / "dev").mkdir(exist_ok=True)
    os.symlink(image, root / "dev" / name)
    for part in table.partitions:
        pname = f"{name}{part.number}"
        (root / "sys/block" / name / pname).mkdir()
        (root / "sys/block" / name / pname / "partition").write_text(f"{part.number}\n")
        node = root / "dev" / pname
        if part.number in fill:
            os.rename(fill[part.number], node)
        else:
            with open(node, "wb") as f:
                f.truncate(part.size_sectors * 512)
    return table


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc/cloud-boot").mkdir(parents=True)
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    store = EfiVarStore(efivars)
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, bootorder.serialise([0, 2]))
    # cache disk: FAT32 ESP named cloud-boot-cache
    esp = tmp_path / "esp.fat"
    with open(esp, "wb") as f:
        f.truncate(40 * MIB)
    run(["mkfs.vfat", "-F", "32", "-n", "CBCACHE", esp])
    _put_marker(esp)
    _disk(root, "vda", [("ef00", "cloud-boot-cache", 40)], {1: esp})
    # target disk: ext4 labelled root with a kernel + initrd behind a symlink
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/vmlinuz-6.1.0-28-amd64").write_bytes(KERNEL)
    (tree / "boot/initrd.img-6.1.0-28-amd64").write_bytes(INITRD)
    (tree / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-28-amd64")
    fs = tmp_path / "root.ext4"
    run(["mkfs.ext4", "-q", "-F", "-L", "debroot", "-d", tree, fs, "16M"])
    _disk(root, "vdb", [("8300", "rootfs", 16)], {1: fs})
    return root


def _plan(target_cmdline: str = "console=ttyS0 marker") -> bytes:
    return (
        'default_target = "debian"\n'
        'target "debian" {\n'
        f'  cmdline = "{target_cmdline}"\n'
        '  disk {\n    device = "LABEL=debroot"\n    kernel = "/vmlinuz"\n  }\n'
        "}\n"
        'target "other" {\n  disk = { device = "/dev/vdb1" }\n}\n'
    ).encode()


def _run(
    root: Path, cmdline: str, lease: Lease | None = None, mounter: Mounter | None = None
) -> tuple[int, str, HostSystem]:
    (root / "proc/cmdline").write_text(cmdline + "\n")
    out = io.StringIO()
    system = HostSystem(lease=lease)
    agent = Agent(system, Console([out]), Paths(root), Arch.X86_64, mounter=mounter)
    status = agent.run()
    if status == 0:
        system.finish()
    return status, out.getvalue(), system


def _mtype(image: Path, path: str) -> bytes:
    dest = image.parent / "out.bin"
    run(["mcopy", "-o", "-i", image, path, dest])
    return dest.read_bytes()


LEASE = Lease("eth0", "10.0.2.15", "255.255.255.0", 24, "10.0.2.2", ("10.0.2.3",), "g1")


@contextlib.contextmanager
def _metadata_server(document: bytes) -> Iterator[tuple[str, list[str]]]:
    """A metadata service on loopback; records the Authorization header it got."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/md", seen
    finally:
        server.shutdown()
        server.server_close()
