"""build_boot_iso: reproducible bytes, incremental no-op, atomic replace, cosign signature."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.gpt import SECTOR, read_gpt
from publisher.media.build import build_boot_iso, stamp_path
from publisher.media.recipe import RecipeError, load_recipe, parse_recipe
from publisher.run import run
from publisher.signing import generate_key_pair, parse_private_key
from tests.qemu_boot import build, recipe_text, repo_recipe


def test_same_inputs_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = build(tmp_path / "a" / "boot.iso", [Arch.X86_64]).output
    b = build(tmp_path / "b" / "boot.iso", [Arch.X86_64]).output
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000002")
    c = build(tmp_path / "c" / "boot.iso", [Arch.X86_64]).output
    assert a.read_bytes() != c.read_bytes()


def test_incremental_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "boot.iso"
    first = build(out, [Arch.X86_64])
    assert not first.skipped and stamp_path(out).is_file()
    inode = out.stat().st_ino
    again = build(out, [Arch.X86_64])
    assert again.skipped and out.stat().st_ino == inode
    changed = build(out, [Arch.X86_64], cmdline="console=ttyS0 other")
    assert not changed.skipped and out.stat().st_ino != inode  # replaced by rename
    # a failing build leaves the previous image in place and no temp file behind
    good = out.read_bytes()
    recipe = repo_recipe()
    broken = tmp_path / "recipe.toml"
    text = recipe_text().replace("../cosign.pub", "")
    text = text.replace('modules = ["virtio_pci"', 'modules = ["no_such_module", "virtio_pci"')
    broken.write_text(text)
    with pytest.raises(CloudbootError, match="no_such_module"):
        build_boot_iso(load_recipe(broken), out, [Arch.X86_64])
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert recipe.for_arch(Arch.X86_64).console == "ttyS0"


def test_signature_verifies_as_cosign_blob(tmp_path: Path) -> None:
    private_pem, public_pem = generate_key_pair(b"pw")
    key = parse_private_key(private_pem, b"pw")
    result = build(tmp_path / "boot.iso", [Arch.X86_64], signing_key=key)
    assert result.signature is not None and result.signature.name == "boot.iso.sig"
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(result.signature.read_text()), result.output.read_bytes(),
                  ec.ECDSA(hashes.SHA256()))  # fmt: skip
    # and through our own CLI's verify-blob
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(public_pem)
    cli = Path(sys.executable).parent / "cloudboot"
    ok = subprocess.run([cli, "verify-blob", "--key", pub, "--signature", result.signature,
                         result.output], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_recipe_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    with pytest.raises(RecipeError, match=r"recipe.toml: arch.x86_64.kernel.oci: invalid ref"):
        parse_recipe('[arch.x86_64]\nkernel = { oci = "no-registry" }\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.kernel.config: unknown key for a oci"):
        parse_recipe('[arch.x86_64]\nkernel = { oci = "r.io/k:1", config = "x" }\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.kernel.verify: expected true or false"):
        parse_recipe('[arch.x86_64]\nkernel = { oci = "r.io/k:1", verify = "yes" }\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.stub.oci: only a kernel"):
        parse_recipe('[arch.x86_64]\nstub = { oci = "r.io/stub:1" }\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.kernel.git: unknown source kind"):
        parse_recipe('[arch.x86_64]\nkernel = { git = "x" }\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.kernel.build: kernel source directory"):
        parse_recipe(f'[arch.x86_64]\nkernel = {{ build = "{tmp_path}/none" }}\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.kernel.config: file not found: .*amd64"):
        parse_recipe(f'[arch.x86_64]\nkernel = {{ build = "{tmp_path}" }}\n', path)
    with pytest.raises(RecipeError, match=r"arch.x86_64.colour: unknown key"):
        parse_recipe('[arch.x86_64]\ncolour = "x"\n', path)
    with pytest.raises(RecipeError, match=r"initramfs.init: expected one of"):
        parse_recipe('[initramfs]\ninit = "systemd"\n[arch.x86_64]\n', path)
    with pytest.raises(RecipeError, match=r"arch.sparc: unknown architecture"):
        parse_recipe("[arch.sparc]\n", path)


def test_cli_build_prints_output_and_stage_times(tmp_path: Path) -> None:
    """Also fail closed: the recipe names ``../cosign.pub``; while it is missing (or not a
    key) the build stops with the key and the file named, and writes no image."""
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "recipe.toml").write_text(recipe_text())
    cli = [os.fspath(Path(sys.executable).parent / "cloudboot"), "-C", os.fspath(tmp_path)]
    build_cmd = [*cli, "build", "--arch", "x86_64", "--iso", tmp_path / "o.iso"]
    missing = subprocess.run(build_cmd, capture_output=True, text=True)
    assert missing.returncode != 0 and not (tmp_path / "o.iso").exists()
    assert f"signing.cosign_public_key = {tmp_path / 'cosign.pub'}" in missing.stderr
    assert "No such file" in missing.stderr and "cloudboot key generate" in missing.stderr
    (tmp_path / "cosign.pub").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    wrong = subprocess.run(build_cmd, capture_output=True, text=True)
    assert wrong.returncode != 0 and not (tmp_path / "o.iso").exists()
    assert "not a public key cosign writes" in wrong.stderr, wrong.stderr
    (tmp_path / "cosign.pub").write_bytes(generate_key_pair(b"pw")[1])
    proc = subprocess.run(build_cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {tmp_path / 'o.iso'}")
    assert "uki-x86_64" in proc.stdout and " ms" in proc.stdout
    again = subprocess.run([*cli, "build", "--arch", "x86_64", "--iso", tmp_path / "o.iso"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert again.stdout.startswith("up to date")


def test_secure_boot_signed_uki_verifies(tmp_path: Path) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
         "/CN=cloudboot test db/", "-days", "1", "-keyout", key, "-out", cert])  # fmt: skip
    text = recipe_text()
    text = (
        text.replace("../cosign.pub", "")
        .replace('# secureboot_key = "db.key"', f'secureboot_key = "{key}"')
        .replace('# secureboot_cert = "db.crt"', f'secureboot_cert = "{cert}"')
    )
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(text)
    out = build_boot_iso(load_recipe(recipe_path), tmp_path / "boot.iso", [Arch.X86_64]).output
    data = out.read_bytes()
    (esp,) = read_gpt(data[: 34 * SECTOR]).partitions
    part = tmp_path / "esp.img"
    part.write_bytes(data[esp.first_lba * SECTOR : (esp.last_lba + 1) * SECTOR])
    uki = tmp_path / "BOOTX64.EFI"
    run(["mcopy", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", uki])
    assert "Signature verification OK" in run(["sbverify", "--cert", cert, uki]).stderr.decode() + \
        run(["sbverify", "--cert", cert, uki]).stdout.decode()  # fmt: skip
