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

from collections.abc import Iterator

import pytest
from virt.firmware.efi import bootentry as vf_bootentry

from guest.contract.arch import Arch
from tests.helpers import push_plan, sign
from tests.qemu_lab import (
    AAVMF_CODE,
    MARKER,
    OVMF_CODE,
    PLAN,
    Lab,
    _vars,
    boot,
    make_lab,
    plan_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-lab")) as made:
        yield made


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
