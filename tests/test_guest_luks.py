"""LUKS1/LUKS2 volumes unlocked in userland (guest/agent/volumes): images made by
cryptsetup (tests/volume_images.py), checked against the plain image they were made from.

The decrypted stream must equal the plain filesystem byte for byte (4096- and 512-byte
sectors, which settles how IVs count), the boot files read through it must equal the
plain disk's, and the failures (wrong or missing passphrase, damaged header, an Argon2
cost larger than the guest's memory) must name the device and never the passphrase.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest.agent import volumes
from guest.agent.diskread import Ext4Reader
from guest.agent.disks.bootfiles import read_boot_files
from guest.agent.stage import DeviceRuns
from guest.agent.volumes.luks import LuksError, WrongPassphraseError
from guest.contract.errors import CloudbootError
from publisher.run import run
from tests.helpers import REPO
from tests.volume_images import LogLines, has_cryptsetup, make_luks

pytestmark = pytest.mark.skipif(not has_cryptsetup(), reason="cryptsetup not installed")

SECRET = b"correct horse battery staple"
KERNEL = "boot/vmlinuz-6.1.0-13-amd64"
INITRD = "boot/initrd.img-6.1.0-13-amd64"


def _plain(base: Path, block: int) -> tuple[Path, dict[str, bytes]]:
    tree = base / "tree"
    (tree / "boot").mkdir(parents=True)
    files = {KERNEL: os.urandom(2 << 20), INITRD: os.urandom(300_000)}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    image = base / "plain.img"
    run(["mkfs.ext4", "-q", "-F", "-b", str(block), "-L", "root", "-d", tree, image, "24M"])
    return image, files


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path, dict[str, bytes]]]:
    out = {}
    for name, version, sector in (("luks2-4k", 2, 4096), ("luks2-512", 2, 512), ("luks1", 1, 512)):
        base = tmp_path_factory.mktemp(name)
        plain, files = _plain(base, 4096 if sector == 4096 else 1024)
        out[name] = (
            plain,
            make_luks(plain, base / "luks.img", SECRET, version=version, sector_size=sector),
            files,
        )
    return out


@pytest.mark.parametrize("name", ["luks2-4k", "luks2-512", "luks1"])
def test_the_unlocked_volume_is_the_plain_image(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]], name: str
) -> None:
    plain, luks, _files = images[name]
    console = LogLines()
    with volumes.open_device(luks, SECRET.decode(), console) as opened:
        assert opened.decrypted and opened.where.endswith(":luks")
        want = plain.read_bytes()
        got = opened.stream.read(len(want))
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    assert f"LUKS{1 if name == 'luks1' else 2} volume" in console.lines[0]


@pytest.mark.parametrize("name", ["luks2-4k", "luks1"])
def test_boot_files_read_through_the_volume(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]], name: str
) -> None:
    _plain_img, luks, files = images[name]
    with (
        volumes.open_device(luks, SECRET.decode(), LogLines()) as opened,
        Ext4Reader(opened.stream, opened.where) as fs,
    ):
        boot = volumes.resolved(read_boot_files(fs), opened)
    assert boot.kernel_path == "/" + KERNEL and boot.initrd_path == "/" + INITRD
    # never device runs into the ciphertext: the bytes themselves
    assert not isinstance(boot.kernel, DeviceRuns) and not isinstance(boot.initrd, DeviceRuns)
    assert boot.kernel == files[KERNEL] and boot.initrd == files[INITRD]


def test_a_plain_disk_still_stages_from_device_runs(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]],
) -> None:
    plain, _luks, files = images["luks2-4k"]
    with (
        volumes.open_device(plain, None, LogLines()) as opened,
        Ext4Reader(opened.stream, opened.where) as fs,
    ):
        boot = volumes.resolved(read_boot_files(fs), opened)
    assert not opened.decrypted
    assert isinstance(boot.kernel, DeviceRuns) and boot.kernel.device == plain
    assert boot.kernel.read() == files[KERNEL]


@pytest.mark.parametrize("name", ["luks2-4k", "luks1"])
def test_a_wrong_passphrase_names_the_device_not_the_passphrase(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]], name: str
) -> None:
    _plain_img, luks, _files = images[name]
    wrong = "hunter2-not-it"
    console = LogLines()
    with pytest.raises(WrongPassphraseError) as caught, volumes.open_device(luks, wrong, console):
        pass
    text = str(caught.value)
    assert str(luks) in text and "no LUKS key slot opens" in text
    assert wrong not in text + "".join(console.lines) and SECRET.decode() not in text


def test_no_passphrase_is_a_clear_error(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]],
) -> None:
    _plain_img, luks, _files = images["luks2-4k"]
    with (
        pytest.raises(CloudbootError, match="is a LUKS volume and no passphrase"),
        volumes.open_device(luks, None, LogLines()),
    ):
        pass


def test_a_damaged_luks2_header_is_refused(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]], tmp_path: Path
) -> None:
    _plain_img, luks, _files = images["luks2-4k"]
    bad = tmp_path / "bad.img"
    data = bytearray(luks.read_bytes()[: 8 << 20])
    data[4096 + 10] ^= 0x20  # one bit of the JSON
    bad.write_bytes(data)
    with (
        pytest.raises(LuksError, match="checksum does not match"),
        volumes.open_device(bad, "x", LogLines()),
    ):
        pass


def test_argon2_larger_than_the_guest_memory_is_skipped_not_run(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]], tmp_path: Path
) -> None:
    """32 MiB of Argon2 memory with 16 MiB available: the slot is not tried (an OOM in
    PID 1 would take the guest down), and the error still names the device."""
    _plain_img, luks, _files = images["luks2-4k"]
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 65536 kB\nMemAvailable: 16384 kB\n")
    console = LogLines()
    with (
        pytest.raises(WrongPassphraseError),
        volumes.open_device(luks, SECRET.decode(), console, meminfo),
    ):
        pass
    assert any("Argon2 wants 32 MiB, skipped" in line for line in console.lines)


def test_a_plain_boot_imports_no_luks_code(
    images: dict[str, tuple[Path, Path, dict[str, bytes]]],
) -> None:
    plain, _luks, _files = images["luks2-4k"]
    code = (
        "import sys; from pathlib import Path; from guest.agent import volumes\n"
        "class C:\n def log(self, m): pass\n"
        f"with volumes.open_device(Path({str(plain)!r}), None, C()) as o: o.stream.read(4096)\n"
        "print(sorted(m for m in sys.modules\n"
        "  if m.startswith('guest.agent.volumes.') or m == 'ctypes'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True, text=True
    )
    assert out.stdout.strip() == "[]"


def test_the_native_primitives_agree_with_cryptography() -> None:
    """libargon2 and libcrypto through ctypes against an independent implementation."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    from guest.agent.volumes.native import XtsDecryptor, argon2

    salt = os.urandom(32)
    want = Argon2id(salt=salt, length=64, iterations=3, lanes=2, memory_cost=1024).derive(SECRET)
    assert argon2("argon2id", SECRET, salt, 3, 1024, 2, 64) == want
    key, plain = os.urandom(64), os.urandom(3 * 512)
    tweaks = [n.to_bytes(16, "little") for n in (7, 8, 9)]
    sealed = b"".join(
        Cipher(algorithms.AES(key), modes.XTS(t)).encryptor().update(plain[i * 512 : (i + 1) * 512])
        for i, t in enumerate(tweaks)
    )
    assert XtsDecryptor(key).decrypt(sealed, b"".join(tweaks), 512) == plain
