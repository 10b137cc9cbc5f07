"""Test helpers for boot media: build real images from the repo recipe, boot them in QEMU.

Kept small on purpose: QEMU argv as data (so it can be read and pinned), one function
that runs it through publisher.run.spawn and waits for a marker on the serial log.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.gpt import guid_from
from publisher.demodisk import power_button_modules, target_initrd
from publisher.media.build import BuildResult, build_boot_iso, resolve_arch
from publisher.media.debs import DebCache
from publisher.media.esp import esp_size
from publisher.media.iso import write_boot_iso
from publisher.media.recipe import Recipe, parse_recipe
from publisher.media.uki import UkiParts, build_uki
from publisher.run import spawn
from tests.helpers import REPO

FIRMWARE = {
    Arch.X86_64: ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    Arch.AARCH64: ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
}
MARKER = "CLOUDBOOT-INIT-OK"


def recipe_text(init: str = "busybox-marker") -> str:
    """The repo's recipe with its ``[initramfs] init`` mode replaced.

    The product default is the guest agent; media tests that only need to reach /init use
    the tiny busybox-marker init, which boots in a fraction of the time.
    """
    text = (REPO / "kernel" / "recipe.toml").read_text()
    replaced, count = re.subn(r'(?m)^init = "[^"]*"', f'init = "{init}"', text)
    assert count == 1, "kernel/recipe.toml has no [initramfs] init line"
    return replaced


def repo_recipe(init: str = "busybox-marker") -> Recipe:
    """The repo's recipe in place; without its key (``../cosign.pub`` is a workspace's
    file, not the checkout's), so the image has none and the build need not fail."""
    recipe = parse_recipe(recipe_text(init), REPO / "kernel" / "recipe.toml")
    return dataclasses.replace(recipe, cosign_public_key=None)


def build(out: Path, arches: list[Arch], **kwargs: object) -> BuildResult:
    return build_boot_iso(repo_recipe(), out, arches, **kwargs)  # type: ignore[arg-type]


def demo_target_iso(out: Path, cmdline: str, arch: Arch = Arch.X86_64) -> Path:
    """The demo target (the repo recipe's Debian kernel + the demo initrd) as a UKI on a
    boot.iso: what the guest agent stages from the demo disk, bootable without the agent.
    """
    recipe = repo_recipe()
    inputs = resolve_arch(recipe.for_arch(arch), recipe, DebCache(), None, offline=False)
    modules_dir = inputs.kernel.modules_dir
    modules = power_button_modules(modules_dir) if modules_dir else []
    initrd = target_initrd(inputs.busybox.read_bytes(), modules)
    parts = UkiParts(inputs.stub.read_bytes(), inputs.kernel.vmlinuz.read_bytes(), initrd,
                     cmdline, inputs.kernel.uname)  # fmt: skip
    uki = build_uki(parts, arch)
    iso = out / f"demo-target-{arch.value}.iso"
    write_boot_iso(iso, {arch.efi_boot_file: uki}, esp_size=esp_size([len(uki)]), epoch=0,
                   disk_guid=guid_from("demo-target-disk"), esp_guid=guid_from("demo-target-esp"),
                   volume_id=1)  # fmt: skip
    return iso


def qemu_argv(arch: Arch, image: Path, vars_copy: Path, *, cdrom: bool) -> list[str]:
    """QEMU for a UEFI boot of ``image`` as a CD-ROM or a read-only virtio disk (no bootindex)."""
    code, _ = FIRMWARE[arch]
    argv = [arch.qemu_binary, "-m", "768", "-nographic", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-monitor", "none"]  # fmt: skip
    if arch is Arch.X86_64:
        argv += ["-M", "q35"]
    else:
        argv += ["-M", "virt", "-cpu", "cortex-a72"]
    argv += [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if cdrom and arch is Arch.X86_64:
        argv += ["-drive", f"file={image},media=cdrom,readonly=on"]
    elif cdrom:  # virt has no IDE: a SCSI CD-ROM on virtio-scsi
        argv += ["-device", "virtio-scsi-pci,id=scsi",
                 "-drive", f"file={image},if=none,id=cd,media=cdrom,readonly=on,format=raw",
                 "-device", "scsi-cd,drive=cd"]  # fmt: skip
    else:
        argv += ["-drive", f"file={image},if=virtio,format=raw,readonly=on"]
    return argv


def boot(arch: Arch, image: Path, workdir: Path, *, cdrom: bool, timeout: float = 110) -> str:
    """Boot and return the serial log once the marker and the cmdline line are there."""
    _, template = FIRMWARE[arch]
    vars_copy = workdir / f"vars-{arch.value}-{'cd' if cdrom else 'disk'}.fd"
    shutil.copyfile(template, vars_copy)
    log = workdir / f"serial-{arch.value}-{'cd' if cdrom else 'disk'}.log"
    log.write_bytes(b"")
    with spawn(qemu_argv(arch, image, vars_copy, cdrom=cdrom), stdout=log, grace=1) as proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_bytes().decode(errors="replace")
            if MARKER in text and "CLOUDBOOT-CMDLINE" in text.split(MARKER, 1)[1]:
                return text
            if proc.poll() is not None:
                return text
            time.sleep(0.25)
    return log.read_bytes().decode(errors="replace")
