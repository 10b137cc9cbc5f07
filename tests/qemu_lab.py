"""The guest-agent QEMU lab: registry, boot.iso with the agent, ext4 target disk, OVMF/AAVMF
boots with fresh NVRAM. Shared by the QEMU tests and bench/guest_boot.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virt.firmware.varstore.edk2 import Edk2VarStore

from guest.contract.arch import Arch
from publisher.localregistry import RunningRegistry, local_registry
from publisher.media import cpio
from publisher.media.build import build_boot_iso
from publisher.media.cachedisk import ensure_cache_disk
from publisher.media.debs import DebCache
from publisher.media.recipe import load_recipe
from publisher.run import run, spawn
from tests.helpers import REPO, new_key, push_plan, sign
from tests.qemu_boot import recipe_text

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
FIRMWARE = {Arch.X86_64: (OVMF_CODE, OVMF_VARS), Arch.AARCH64: (AAVMF_CODE, AAVMF_VARS)}
MARKER = "CLOUDBOOT-TARGET-MARKER-7d1f"


@dataclass
class Lab:
    root: Path
    registry: RunningRegistry
    iso: Path
    target: Path
    key_pem: bytes
    key: object
    arch: Arch = Arch.X86_64
    #: More target disks after ``target`` (btrfs RAID1, md members, LVM PVs).
    more_targets: tuple[Path, ...] = ()


def _tiny_initrd(busybox: Path, marker: str = MARKER, before: str = "") -> bytes:
    """A busybox initrd that runs ``before`` (shell lines), prints ``marker`` and its
    /proc/cmdline, and powers off."""
    init = (
        f"#!/bin/busybox sh\n{before}echo {marker} $(/bin/busybox cat /proc/cmdline)\n"
        "/bin/busybox poweroff -f\n"
    )
    entries = [cpio.directory("/dev"), cpio.char_device("/dev/console", 5, 1),
               cpio.directory("/proc"), cpio.file("/bin/busybox", busybox.read_bytes(), 0o755),
               cpio.file("/init", init.encode(), 0o755)]  # fmt: skip
    return cpio.compress(cpio.newc(entries), cpio.Compression.GZIP)


def build_iso(
    root: Path, init: str, cmdline: str, arch: Arch = Arch.X86_64, recipe_extra: str = "",
    initramfs_extra: str = "",
) -> Path:  # fmt: skip
    """boot.iso from a copy of the repo's recipe with ``init`` (guest-agent|busybox-marker);
    ``recipe_extra`` is TOML appended to it (e.g. a ``[registry]`` table),
    ``initramfs_extra`` TOML lines added to its ``[initramfs]`` table (ZFS's ``trees``)."""
    suffix = "" if arch is Arch.X86_64 else f"-{arch.value}"
    kernel_dir = root / f"kernel-{init}{suffix}"
    shutil.copytree(REPO / "kernel", kernel_dir)
    recipe_path = kernel_dir / "recipe.toml"
    text = recipe_text(init)
    if initramfs_extra:
        text = text.replace("\n[initramfs]\n", f"\n[initramfs]\n{initramfs_extra}\n", 1)
    recipe_path.write_text(text + recipe_extra)
    iso = root / f"boot-{init}{suffix}.iso"
    build_boot_iso(load_recipe(recipe_path), iso, [arch], cmdline)
    return iso


@contextlib.contextmanager
def make_lab(
    root: Path, arch: Arch = Arch.X86_64, cmdline: str = "", recipe_extra: str = "",
    initramfs_extra: str = "",
) -> Iterator[Lab]:  # fmt: skip
    """Registry, boot.iso with the agent, and the ext4 target disk (for tests and bench).

    ``cmdline`` replaces the baked default (the plan in the lab's registry); its
    ``{port}`` is the lab registry's port.
    """
    key, pem = new_key()
    with local_registry(root / "registry") as registry:
        (root / "cosign.pub").write_bytes(pem)
        default = (
            "cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:{port}"
            f"/plans/web cloudboot.insecure=1 no_timer_check console={arch.serial_console}"
        )
        baked = (cmdline or default).replace("{port}", str(registry.port))
        iso = build_iso(root, "guest-agent", baked, arch, recipe_extra, initramfs_extra)
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


#: The lab's network: QEMU user networking (DHCP, the host as 10.0.2.2) on one virtio NIC.
USER_NET = ("-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")


def qemu_argv(
    lab: Lab, vars_fd: Path, cache: Path, serial: Path, reboot: bool,
    net: Sequence[str] = USER_NET,
) -> list[str]:  # fmt: skip
    """QEMU for the lab: the ISO, the cache disk and the target disk on virtio, rng, net."""
    code, _template = FIRMWARE[lab.arch]
    if lab.arch is Arch.X86_64:
        machine = ["-machine", "q35"]
    else:  # pointer authentication is costly under TCG: cortex-a72 boots ~2x faster
        machine = ["-machine", "virt", "-cpu", "cortex-a72"]
    # One vCPU, as the e2e loops (tests/e2e/harness.py, LiveLoop): two bought no speed
    # here (two lab tests: 57.8 s with one, 64.6 s with two) and a 2-vCPU TCG guest once
    # stalled for good in CI.
    argv = [
        lab.arch.qemu_binary, "-nodefaults", "-no-user-config", *machine,
        "-accel", "tcg", "-m", "1024", "-smp", "1", "-display", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-drive", f"if=none,id=iso,format=raw,readonly=on,file={lab.iso}",
        "-device", "virtio-blk-pci,drive=iso",
        "-drive", f"if=none,id=cache,format=raw,file={cache}",
        "-device", "virtio-blk-pci,drive=cache",
        "-drive", f"if=none,id=target,format=raw,readonly=on,file={lab.target}",
        "-device", "virtio-blk-pci,drive=target",
        *(arg for i, more in enumerate(lab.more_targets) for arg in (
            "-drive", f"if=none,id=more{i},format=raw,readonly=on,file={more}",
            "-device", f"virtio-blk-pci,drive=more{i}")),
        "-device", "virtio-rng-pci",
        *net,
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    return argv + (["-action", "reboot=reset"] if reboot else ["-no-reboot"])


def boot(
    lab: Lab, name: str, until: str, timeout: float = 240.0, cache: Path | None = None,
    net: Sequence[str] = USER_NET,
) -> tuple[str, Path]:  # fmt: skip
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
    argv = qemu_argv(lab, vars_fd, cache, serial, reboot=until != "FATAL", net=net)
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
                time.sleep(1.0)  # what the guest prints right after the line (a FATAL's hint)
                break
            time.sleep(0.2)  # a boot ends on its marker line: a coarser poll only waits
    return (serial.read_text(errors="replace") if serial.exists() else ""), vars_fd


def _vars(path: Path) -> dict[str, bytes]:
    return {n: bytes(v.data) for n, v in Edk2VarStore(str(path)).get_varlist().items()}


def target_kernel(lab: Lab) -> tuple[str, bytes, bytes]:
    """The lab's Debian cloud kernel (release, bytes) and the marker initrd."""
    debs = DebCache()
    kpkg = debs.kernel_package(f"linux-image-cloud-{lab.arch.oci}", lab.arch)
    busybox = debs.package("busybox-static", lab.arch).root / "bin/busybox"
    vmlinuz = next((kpkg.root / "boot").glob("vmlinuz-*"))
    return vmlinuz.name.removeprefix("vmlinuz-"), vmlinuz.read_bytes(), _tiny_initrd(busybox)


def boot_disk_layout(lab: Lab, name: str, layouts: Callable[..., dict[str, Any]]) -> str:
    """Boot the lab with the disk layout ``name`` (tests/disk_images.py) as the target:
    its image(s) attached after the cache disk, a signed plan naming it, the serial log."""
    from tests.disk_images import image_for

    layout, disk = layouts(*target_kernel(lab))[name]
    return boot_disk_plan(lab, name, disk, image_for(layout))


def boot_disk_plan(lab: Lab, name: str, disk: str, images: Sequence[Path]) -> str:
    """Boot the lab with ``images`` as the target disks and a signed plan whose target
    ``name`` has the disk block body ``disk``; the serial log."""
    plan = (
        f'default_target = "{name}"\n'
        f'target "{name}" {{\n  cmdline = "console=ttyS0 panic=-1 {name}-marker"\n'
        f"  disk {{\n  {disk}\n  }}\n}}\n"
    ).encode()
    # the lab's boot.iso names plans/web on its command line
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    here = dataclasses.replace(lab, target=images[0], more_targets=tuple(images[1:]))
    log, _vars_fd = boot(here, name, MARKER)
    return log
