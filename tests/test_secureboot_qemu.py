"""Secure Boot end to end on QEMU (issue 13): our own PK/KEK/db enrolled in OVMF's vars.

The keys are made here (``cryptography``), enrolled in a copy of OVMF's vars template with
virt-firmware's ``virt-fw-vars``, and the boot.iso is built by the product path
(``build_boot_iso`` with the recipe's ``secureboot_key``/``secureboot_cert``: sbsign).
Then, under OVMF's Secure Boot build:

- the signed UKI boots, and a Boot0001 whose optional data carries another command line
  does not replace the UKI's baked one (systemd-stub ignores load options under Secure
  Boot); the same entry without Secure Boot does replace it, so the entry is really used;
- the same ISO with one byte of the UKI flipped is refused by the firmware;
- an unsigned UKI (what a staged kernel the db key did not sign is) is refused.

Each boot is one QEMU (TCG, SMM on); run this module on its own.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from guest.contract import gpt
from guest.contract.arch import Arch
from guest.contract.efi import BOOT_VARIABLE_ATTRIBUTES, GLOBAL_VARIABLE_GUID, bootorder, ucs16
from guest.contract.efi.devpath import DevicePath, HardDrive
from guest.contract.efi.edk2vars import VarsFile
from guest.contract.efi.loadoption import LoadOption
from publisher.media.build import build_boot_iso
from publisher.run import run, spawn
from tests.qemu_boot import FIRMWARE, MARKER, demo_target_iso, qemu_argv, repo_recipe

pytestmark = pytest.mark.slow

OWNER = uuid.UUID("c10ddb00-7e57-4b1d-9a5e-000000000013")
BAKED = "console=ttyS0 cloudboot.test=baked"
EVIL = "console=ttyS0 cloudboot.test=evil"
REFUSED = ("Access Denied", "Security Violation")
DONE = ("No bootable option", "Shell>", "reboot: Power down", "reboot: Restarting")


def _keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """An RSA-2048 key and its self-signed certificate, PEM, as sbsign and virt-fw-vars read."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cloudboot test {name}")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys, the enrolled vars template, the signed ISO, its tampered twin."""
    work = tmp_path_factory.mktemp("secureboot")
    certs = {name: _keypair(work, name) for name in ("PK", "KEK", "db")}
    vars_template = work / "OVMF_VARS_4M.enrolled.fd"
    tool = Path(sys.executable).parent / "virt-fw-vars"
    run([tool, "-i", FIRMWARE[Arch.X86_64][1], "-o", vars_template,
         "--set-pk", str(OWNER), certs["PK"][1], "--add-kek", str(OWNER), certs["KEK"][1],
         "--add-db", str(OWNER), certs["db"][1], "--secure-boot"])  # fmt: skip
    db_key, db_cert = certs["db"]
    recipe = replace(repo_recipe(), secureboot_key=db_key, secureboot_cert=db_cert)
    signed = build_boot_iso(recipe, work / "signed.iso", [Arch.X86_64], cmdline=BAKED).output
    data = bytearray(signed.read_bytes())
    needle = BAKED.encode()
    assert data.count(needle) == 1, "the UKI's .cmdline section should be in the ISO once"
    at = data.index(needle) + len(needle) - 1
    data[at] ^= 0x01  # "baked" -> "bakec": one bit of the signed .cmdline section
    tampered = work / "tampered.iso"
    tampered.write_bytes(bytes(data))
    unsigned = demo_target_iso(work, BAKED)
    return {"vars": vars_template, "signed": signed, "tampered": tampered, "unsigned": unsigned}


def _with_boot_entry(template: Path, image: Path, out: Path, cmdline: str) -> Path:
    r"""``template`` plus Boot0001 = HD(the image's ESP)/\EFI\BOOT\BOOTX64.EFI with
    ``cmdline`` as its optional data, first in BootOrder: what a guest (or anyone who can
    write NVRAM) would do to pass another command line to the UKI."""
    with open(image, "rb") as f:
        esp = gpt.read_gpt(f).esps()[0]
    entry = LoadOption(
        attributes=1,
        description="another cmdline",
        device_path=DevicePath.hd_file(
            HardDrive(esp.number, esp.first_lba, esp.size_sectors, esp.unique_guid),
            Arch.X86_64.efi_boot_file.replace("/", "\\"),
        ),
        optional_data=ucs16.encode(cmdline),
    )
    store = VarsFile.from_bytes(template.read_bytes())
    store.write("Boot0001", GLOBAL_VARIABLE_GUID, BOOT_VARIABLE_ATTRIBUTES, bytes(entry))
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, BOOT_VARIABLE_ATTRIBUTES,
              bootorder.serialise([1]))  # fmt: skip
    out.write_bytes(bytes(store))
    return out


def _boot(image: Path, vars_file: Path, workdir: Path, *, secure_boot: bool) -> str:
    """Boot ``image`` as a virtio disk; the serial log once the guest printed its command
    line, the firmware refused, or QEMU ended (TCG: no wall-clock assertion, only a cap
    so a wedged firmware cannot hang the suite)."""
    vars_copy = workdir / f"vars-{image.stem}-{secure_boot}.fd"
    shutil.copyfile(vars_file, vars_copy)
    log = workdir / f"serial-{image.stem}-{secure_boot}.log"
    log.write_bytes(b"")
    argv = qemu_argv(Arch.X86_64, image, vars_copy, cdrom=False, secure_boot=secure_boot)
    with spawn(argv, stdout=log, grace=1) as proc:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_bytes().decode(errors="replace")
            if "CLOUDBOOT-CMDLINE" in text.split(MARKER, 1)[-1] and MARKER in text:
                break
            if any(word in text for word in (*REFUSED, *DONE)):
                time.sleep(1)  # let the firmware finish its line
                break
            time.sleep(0.5)
    return log.read_bytes().decode(errors="replace")


def _cmdline(log: str) -> str:
    assert MARKER in log, log[-3000:]
    return log.split("CLOUDBOOT-CMDLINE", 1)[1].splitlines()[0]


def test_signed_uki_boots_and_load_options_cannot_replace_its_cmdline(
    secure: dict[str, Path], tmp_path: Path
) -> None:
    vars_file = _with_boot_entry(secure["vars"], secure["signed"], tmp_path / "v.fd", EVIL)
    log = _boot(secure["signed"], vars_file, tmp_path, secure_boot=True)
    assert "Secure boot enabled" in log, log[-3000:]  # the kernel's own report
    cmdline = _cmdline(log)
    assert "cloudboot.test=baked" in cmdline and "evil" not in cmdline, cmdline


def test_without_secure_boot_the_same_entry_does_replace_the_cmdline(
    secure: dict[str, Path], tmp_path: Path
) -> None:
    """The control: the Boot0001 above is the entry the firmware starts, and its optional
    data is a command line systemd-stub honours when Secure Boot is off."""
    plain = tmp_path / "plain-vars.fd"
    _with_boot_entry(Path(FIRMWARE[Arch.X86_64][1]), secure["signed"], plain, EVIL)
    log = _boot(secure["signed"], plain, tmp_path, secure_boot=False)
    assert "cloudboot.test=evil" in _cmdline(log)


def test_uki_with_one_flipped_byte_is_refused(secure: dict[str, Path], tmp_path: Path) -> None:
    """Same vars, same firmware path (the removable-media entry): the signed ISO boots, its
    twin with one bit of the UKI's .cmdline flipped is refused."""
    good = _boot(secure["signed"], secure["vars"], tmp_path, secure_boot=True)
    assert "starting Boot0002" in good and "cloudboot.test=baked" in _cmdline(good)
    log = _boot(secure["tampered"], secure["vars"], tmp_path, secure_boot=True)
    assert MARKER not in log and "Linux version" not in log, log[-3000:]
    assert "failed to load Boot0002" in log and any(word in log for word in REFUSED), log


def test_unsigned_uki_is_refused(secure: dict[str, Path], tmp_path: Path) -> None:
    """What a staged target kernel that the db key did not sign meets: the firmware's no."""
    log = _boot(secure["unsigned"], secure["vars"], tmp_path, secure_boot=True)
    assert MARKER not in log and "Linux version" not in log, log[-3000:]
    assert any(word in log for word in REFUSED), log[-3000:]
