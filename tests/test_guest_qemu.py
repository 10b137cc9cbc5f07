"""The guest agent booted for real: OVMF + boot.iso (init = "guest-agent") + cache disk +
an ext4 target disk + a registry on host loopback reached as 10.0.2.2 (QEMU TCG, x86_64).

Signed plan -> the agent stages the disk target, writes Boot0001, reboots, and the
firmware boots the target kernel, whose tiny initrd prints a marker. Unsigned plan under
enforce -> a FATAL line naming the signature problem and no Boot0001 in the vars file.
The same signed-plan boot on aarch64 (AAVMF, ``-M virt -cpu cortex-a72``, the arm64
Python runtime and Debian arm64 cloud kernel) is one more boot, marked ``aarch64`` too
so a tight CI budget can leave it out (``-m "not aarch64"``).
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

from guest.contract.arch import Arch
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
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
FIRMWARE = {Arch.X86_64: (OVMF_CODE, OVMF_VARS), Arch.AARCH64: (AAVMF_CODE, AAVMF_VARS)}
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
    arch: Arch = Arch.X86_64


def _tiny_initrd(busybox: Path, marker: str = MARKER) -> bytes:
    init = (
        f"#!/bin/busybox sh\necho {marker} $(/bin/busybox cat /proc/cmdline)\n"
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


def build_iso(root: Path, init: str, cmdline: str, arch: Arch = Arch.X86_64) -> Path:
    """boot.iso from a copy of the repo's recipe with ``init`` (guest-agent|busybox-marker)."""
    suffix = "" if arch is Arch.X86_64 else f"-{arch.value}"
    kernel_dir = root / f"kernel-{init}{suffix}"
    shutil.copytree(REPO / "kernel", kernel_dir)
    recipe_path = kernel_dir / "recipe.toml"
    text = recipe_text(init)
    text = text.replace('compression = "gzip"', 'compression = "zstd"')
    recipe_path.write_text(text)
    iso = root / f"boot-{init}{suffix}.iso"
    build_boot_iso(load_recipe(recipe_path), iso, [arch], cmdline)
    return iso


@contextlib.contextmanager
def make_lab(root: Path, arch: Arch = Arch.X86_64) -> Iterator[Lab]:
    """Registry, boot.iso with the agent, and the ext4 target disk (for tests and bench)."""
    key, pem = new_key()
    with local_registry(root / "registry") as registry:
        (root / "cosign.pub").write_bytes(pem)
        cmdline = (
            f"cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{registry.port}"
            f"/plans/web cloudboot.insecure=1 console={arch.serial_console}"
        )
        iso = build_iso(root, "guest-agent", cmdline, arch)
        debs = DebCache()
        kpkg = debs.kernel_package(f"linux-image-cloud-{arch.oci}", arch)
        busybox = debs.package("busybox-static", arch).root / "bin/busybox"
        tree = root / "target-tree"
        (tree / "boot").mkdir(parents=True)
        vmlinuz = next((kpkg.root / "boot").glob("vmlinuz-*"))
        shutil.copy(vmlinuz, tree / "boot" / vmlinuz.name)
        suffix = vmlinuz.name.removeprefix("vmlinuz-")
        (tree / "boot" / f"initrd.img-{suffix}").write_bytes(_tiny_initrd(busybox))
        (tree / "vmlinuz").symlink_to(f"boot/{vmlinuz.name}")
        target = root / "target.ext4"
        run(["mkfs.ext4", "-q", "-F", "-L", "targetroot", "-d", tree, target, "64M"])
        yield Lab(root, registry, iso, target, pem, key, arch)


def plan_for(arch: Arch) -> bytes:
    return (
        'default_target = "debian"\n'
        f'target "debian" {{\n  cmdline = "console={arch.serial_console} panic=-1"\n'
        '  disk { device = "LABEL=targetroot" }\n}\n'
    ).encode()


PLAN = plan_for(Arch.X86_64)


def qemu_argv(lab: Lab, vars_fd: Path, cache: Path, serial: Path, reboot: bool) -> list[str]:
    """QEMU for the lab: the ISO, the cache disk and the target disk on virtio, rng, net."""
    code, _template = FIRMWARE[lab.arch]
    if lab.arch is Arch.X86_64:
        machine = ["-machine", "q35"]
    else:  # pointer authentication is costly under TCG: cortex-a72 boots ~2x faster
        machine = ["-machine", "virt", "-cpu", "cortex-a72"]
    argv = [
        lab.arch.qemu_binary, "-nodefaults", "-no-user-config", *machine,
        "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-drive", f"if=none,id=iso,format=raw,readonly=on,file={lab.iso}",
        "-device", "virtio-blk-pci,drive=iso",
        "-drive", f"if=none,id=cache,format=raw,file={cache}",
        "-device", "virtio-blk-pci,drive=cache",
        "-drive", f"if=none,id=target,format=raw,readonly=on,file={lab.target}",
        "-device", "virtio-blk-pci,drive=target",
        "-device", "virtio-rng-pci",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    return argv + (["-action", "reboot=reset"] if reboot else ["-no-reboot"])


def boot(
    lab: Lab, name: str, until: str, timeout: float = 240.0, cache: Path | None = None
) -> tuple[str, Path]:
    """Boot with fresh NVRAM (a copy of the vars template) and a new cache disk, or the
    given ``cache`` kept from an earlier boot (as the dev loop keeps it across resets)."""
    work = lab.root / name
    work.mkdir()
    vars_fd = work / "vars.fd"
    shutil.copy(FIRMWARE[lab.arch][1], vars_fd)
    if cache is None:
        cache = work / "cache.raw"
        ensure_cache_disk(cache, 64)
    serial = work / "serial.log"
    argv = qemu_argv(lab, vars_fd, cache, serial, reboot=until != "FATAL")
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


@pytest.fixture(scope="module")
def arm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not AAVMF_CODE.exists():
        pytest.skip("qemu-efi-aarch64 not installed")
    with make_lab(tmp_path_factory.mktemp("qemu-lab-arm"), Arch.AARCH64) as made:
        yield made


@pytest.mark.aarch64
def test_aarch64_signed_plan_boots_the_disk_target(arm_lab: Lab) -> None:
    """One aarch64 boot: fetch + verify + stage + Boot0001, then AAVMF boots the arm64
    target kernel from the cache ESP and its initrd prints the marker."""
    plan = plan_for(Arch.AARCH64)
    digest = push_plan(arm_lab.registry.url, "plans/web", "latest", plan)
    reg = arm_lab.registry
    sign(reg.url, "plans/web", f"{reg.address}/plans/web", digest, arm_lab.key)  # type: ignore[arg-type]
    log, vars_fd = boot(arm_lab, "signed-arm", MARKER, timeout=300)
    assert "arch=arm64" in log and "plan signature verified" in log, log[-3000:]
    assert MARKER in log, log[-3000:]
    variables = _vars(vars_fd)
    entry = vf_bootentry.BootEntry(data=variables["Boot0001"])
    assert str(entry.title) == "cloud-boot debian"
    assert variables["BootOrder"][:2] == b"\x01\x00"
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(r"initrd=\EFI\Linux\debian-initrd console=ttyAMA0 panic=-1")
