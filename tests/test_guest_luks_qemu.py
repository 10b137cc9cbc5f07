"""A LUKS2 (Argon2id) target disk booted through the real two-pass flow (QEMU TCG, OVMF).

The lab's ext4 target is encrypted with ``cryptsetup reencrypt --encrypt`` (no
device-mapper on the host); the signed plan names it by device and carries the
passphrase. Right passphrase: the agent unlocks it in userland, stages the kernel and
initrd, and the target's marker and cmdline reach the serial log. Wrong passphrase: a
FATAL line naming the device, and neither passphrase anywhere in the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.helpers import push_plan, sign
from tests.qemu_lab import MARKER, OVMF_CODE, Lab, boot, make_lab
from tests.volume_images import has_cryptsetup, make_luks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf not installed"),
    pytest.mark.skipif(not has_cryptsetup(), reason="cryptsetup not installed"),
]

SECRET = "luks-in-the-lab-0b7e"
WRONG = "not-the-passphrase-93c1"


def luks_plan(passphrase: str) -> bytes:
    return (
        'default_target = "debian"\n'
        'target "debian" {\n  cmdline = "console=ttyS0 panic=-1"\n'
        f'  disk {{\n    device = "/dev/vdc"\n    luks-passphrase = "{passphrase}"\n  }}\n}}\n'
    ).encode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("qemu-luks")) as made:
        luks = make_luks(made.target, made.root / "target.luks2", SECRET.encode(), sector_size=512)
        yield dataclasses.replace(made, target=luks)


def _push_signed(lab: Lab, plan: bytes) -> None:
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]


def test_luks2_target_boots(lab: Lab) -> None:
    _push_signed(lab, luks_plan(SECRET))
    log, _vars_fd = boot(lab, "luks2", MARKER, timeout=360)
    assert "LUKS2 volume" in log and "LUKS key slot 0 opened" in log, log[-3000:]
    assert MARKER in log, log[-3000:]
    last_cmdline = [line for line in log.splitlines() if "Kernel command line:" in line][-1]
    assert last_cmdline.endswith(r"initrd=\EFI\Linux\debian-initrd console=ttyS0 panic=-1")
    assert SECRET not in log


def test_wrong_passphrase_is_fatal_naming_the_device(lab: Lab) -> None:
    _push_signed(lab, luks_plan(WRONG))
    log, _vars_fd = boot(lab, "luks2-wrong", "FATAL", timeout=360)
    fatal = [line for line in log.splitlines() if line.startswith("FATAL: ")]
    assert fatal and "/dev/vdc" in fatal[0] and "no LUKS key slot opens" in fatal[0], log[-3000:]
    assert MARKER not in log
    assert WRONG not in log and SECRET not in log
