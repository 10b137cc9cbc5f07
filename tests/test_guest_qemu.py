"""The guest agent booted for real: OVMF + boot.iso (init = "guest-agent") + cache disk +
an ext4 target disk + a registry on host loopback reached as 10.0.2.2 (QEMU TCG, x86_64).

Signed plan -> the agent stages the disk target, writes Boot0001, reboots, and the
firmware boots the target kernel, whose tiny initrd prints a marker. Unsigned plan under
enforce -> a FATAL line naming the signature problem and no Boot0001 in the vars file.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from virt.firmware.efi import bootentry as vf_bootentry
from virt.firmware.varstore.edk2 import Edk2VarStore

from guest.arch import Arch
from publisher.localregistry import RunningRegistry, local_registry
from publisher.media import cpio
from publisher.media.build import build_boot_iso
from publisher.media.cachedisk import ensure_cache_disk
from publisher.media.debs import DebCache
from publisher.media.recipe import load_recipe
from publisher.run import run, spawn
from tests.conftest import REPO
from tests.qemu_boot import recipe_text
from tests.test_guest_fetch import new_key, push_plan, sign

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MARKER = "CLOUDBOOT-TARGET-MARKER-7d1f"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]


@dataclass
class Lab:
    root: Path
    registry: RunningRegistry
    iso: Path
    target: Path
    key_pem: bytes
    key: object


def _tiny_initrd(busybox: Path) -> bytes:
    init = (
        f"#!/bin/busybox sh\necho {MARKER} $(/bin/busybox cat /proc/cmdline)\n"
        "/bin/busybox poweroff -f\n"
    )
    entries = [cpio.directory("/dev"), cpio.char_device("/dev/console", 5, 1),
               cpio.directory("/proc"), cpio.file("/bin/busybox", busybox.read_bytes(), 0o755),
               cpio.file("/init", init.encode(), 0o755)]  # fmt: skip
    return cpio.compress(cpio.newc(entries), cpio.Compression.GZIP)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-lab")) as made:
        yield made


def build_iso(root: Path, init: str, cmdline: str) -> Path:
    """boot.iso from a copy of the repo's recipe with ``init`` (guest-agent|busybox-marker)."""
    kernel_dir = root / f"kernel-{init}"
    shutil.copytree(REPO / "kernel", kernel_dir)
    recipe_path = kernel_dir / "recipe.toml"
    text = recipe_text(init)
    text = text.replace('compression = "gzip"', 'compression = "zstd"')
    recipe_path.write_text(text)
    iso = root / f"boot-{init}.iso"
    build_boot_iso(load_recipe(recipe_path), iso, [Arch.X86_64], cmdline)
    return iso


@contextlib.contextmanager
def make_lab(root: Path) -> Iterator[Lab]:
    """Registry, boot.iso with the agent, and the ext4 target disk (for tests and bench)."""
    key, pem = new_key()
    with local_registry(root / "registry") as registry:
        (root / "cosign.pub").write_bytes(pem)
        cmdline = (
            f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{registry.port}"
            "/plans/web cloudboot.insecure=1 console=ttyS0"
        )
        iso = build_iso(root, "guest-agent", cmdline)
        debs = DebCache()
        kpkg = debs.kernel_package("linux-image-cloud-amd64", Arch.X86_64)
        busybox = debs.package("busybox-static", Arch.X86_64).root / "bin/busybox"
        tree = root / "target-tree"
        (tree / "boot").mkdir(parents=True)
        vmlinuz = next((kpkg.root / "boot").glob("vmlinuz-*"))
        shutil.copy(vmlinuz, tree / "boot" / vmlinuz.name)
        suffix = vmlinuz.name.removeprefix("vmlinuz-")
        (tree / "boot" / f"initrd.img-{suffix}").write_bytes(_tiny_initrd(busybox))
        (tree / "vmlinuz").symlink_to(f"boot/{vmlinuz.name}")
        target = root / "target.ext4"
        run(["mkfs.ext4", "-q", "-F", "-L", "targetroot", "-d", tree, target, "64M"])
        yield Lab(root, registry, iso, target, pem, key)


PLAN = (b'default_target = "debian"\n'
        b'target "debian" {\n  cmdline = "console=ttyS0 panic=-1"\n'
        b'  disk { device = "LABEL=targetroot" }\n}\n')  # fmt: skip


def boot(lab: Lab, name: str, until: str, timeout: float = 240.0) -> tuple[str, Path]:
    work = lab.root / name
    work.mkdir()
    vars_fd = work / "vars.fd"
    shutil.copy(OVMF_VARS, vars_fd)
    cache = work / "cache.raw"
    ensure_cache_disk(cache, 64)
    serial = work / "serial.log"
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-machine", "q35",
        "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-drive", f"if=none,id=iso,format=raw,readonly=on,file={lab.iso}",
        "-device", "virtio-blk-pci,drive=iso",
        "-drive", f"if=none,id=cache,format=raw,file={cache}",
        "-device", "virtio-blk-pci,drive=cache",
        "-drive", f"if=none,id=target,format=raw,readonly=on,file={lab.target}",
        "-device", "virtio-blk-pci,drive=target",
        "-device", "virtio-rng-pci",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-serial", f"file:{serial}", "-no-reboot" if until == "FATAL" else "-action",
    ]  # fmt: skip
    if until != "FATAL":
        argv += ["reboot=reset"]
    with spawn(argv, stdout=work / "qemu.log"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            done = [
                line
                for line in text.splitlines(keepends=True)
                if until in line and line.endswith("\n")
            ]
            if done:
                time.sleep(1.0)
                break
            time.sleep(1.0)
    return (serial.read_text(errors="replace") if serial.exists() else ""), vars_fd


def _vars(path: Path) -> dict[str, bytes]:
    return {n: bytes(v.data) for n, v in Edk2VarStore(str(path)).get_varlist().items()}


def test_signed_plan_boots_the_disk_target(lab: Lab) -> None:
    digest = push_plan(lab.registry.url, "plans/web", "latest", PLAN)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    log, vars_fd = boot(lab, "signed", MARKER)
    assert MARKER in log, log[-3000:]
    assert "step read" in log and "step nvram" in log
    variables = _vars(vars_fd)
    entry = vf_bootentry.BootEntry(data=variables["Boot0001"])
    assert str(entry.title) == "cloud-boot debian"
    assert variables["BootOrder"][:2] == b"\x01\x00"
    # the target kernel (second boot) got the load options Boot0001 carries
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(r"initrd=\EFI\Linux\debian-initrd console=ttyS0 panic=-1")


def test_unsigned_plan_under_enforce_is_fatal_and_leaves_nvram(lab: Lab) -> None:
    push_plan(lab.registry.url, "plans/web", "latest", PLAN + b"# unsigned change\n")
    log, vars_fd = boot(lab, "unsigned", "FATAL")
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "signature" in fatal[0], log[-3000:]
    assert MARKER not in log
    # OVMF itself fills Boot0000.. with the devices it found ("UEFI Misc Device" may be
    # Boot0001), so "untouched" means: no cloud-boot entry anywhere, BootOrder OVMF's own.
    variables = _vars(vars_fd)
    titles = [
        str(vf_bootentry.BootEntry(data=data).title)
        for name, data in variables.items()
        if name.startswith("Boot") and name[4:].isalnum() and len(name) == 8
    ]
    assert titles and not any(t.startswith("cloud-boot") for t in titles)
    assert variables["BootOrder"][:2] == b"\x00\x00"
