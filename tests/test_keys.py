"""publisher.signing and `cloudboot key generate` / `verify-blob`: cosign's key format.

The encrypted key is opened here by an independent reading of cosign's format (scrypt +
nacl secretbox written out in the test), so a file that only our own code could read
would fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import nacl.secret
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from publisher.signing import (
    KeyFileError,
    encrypt_private_key,
    generate_key_pair,
    load_key_file,
    parse_private_key,
    sign_blob,
)
from tests.helpers import load_private_key

BIN = Path(sys.executable).parent


def open_cosign_key(pem: bytes, password: bytes) -> bytes:
    """Independent decryption of an ENCRYPTED SIGSTORE PRIVATE KEY -> PKCS#8 DER."""
    match = re.search(
        rb"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----(.*)"
        rb"-----END ENCRYPTED SIGSTORE PRIVATE KEY-----",
        pem,
        re.S,
    )
    assert match
    doc = json.loads(base64.b64decode(b"".join(match.group(1).split())))
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert doc["cipher"]["name"] == "nacl/secretbox"
    key = hashlib.scrypt(
        password, salt=base64.b64decode(doc["kdf"]["salt"]), n=65536, r=8, p=1,
        maxmem=2**27, dklen=32,
    )  # fmt: skip
    box = nacl.secret.SecretBox(key)
    return box.decrypt(
        base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["cipher"]["nonce"])
    )


def test_generated_pair_is_cosign_format() -> None:
    private_pem, public_pem = generate_key_pair(b"hunter2")
    der = open_cosign_key(private_pem, b"hunter2")
    private = serialization.load_der_private_key(der, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(public_pem)
    assert public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = parse_private_key(private_pem, b"hunter2")
    assert key.public_pem == public_pem


def test_sign_blob_is_ecdsa_over_sha256_of_the_data() -> None:
    private_pem, public_pem = generate_key_pair(b"")
    key = parse_private_key(private_pem, b"")
    data = os.urandom(10_000)
    sig = base64.b64decode(sign_blob(key, data))
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(sig, data + b"!", ec.ECDSA(hashes.SHA256()))


def test_wrong_password_and_missing_password_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cosign.key"
    path.write_bytes(generate_key_pair(b"right")[0])
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, b"wrong")
    assert str(info.value).startswith(f"{path}: wrong password")
    with pytest.raises(KeyFileError, match="COSIGN_PASSWORD"):
        load_private_key(path, None)
    with pytest.raises(KeyFileError, match="cannot read key"):
        load_key_file(tmp_path / "absent.key")


def test_plain_and_legacy_keys_are_read() -> None:
    for private in (
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ):
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = parse_private_key(pem, None)
        assert key.public_pem == private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    legacy = encrypt_private_key(der, b"pw").replace(b"SIGSTORE", b"COSIGN")
    assert (
        parse_private_key(legacy, b"pw").private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        == der
    )
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="P-256"):
        parse_private_key(p384, None)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cloudboot"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_key_generate_and_verify_blob(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "cosign.key"
    env = {"COSIGN_PASSWORD": "pw"}
    out = cli("key", "generate", "-o", str(key_path), env=env)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pub = key_path.with_suffix(".pub")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = key_path.read_bytes()
    again = cli("key", "generate", "-o", str(key_path), env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert key_path.read_bytes() == before

    iso = tmp_path / "boot.iso"
    iso.write_bytes(os.urandom(100_000))
    sig = tmp_path / "boot.iso.sig"
    sig.write_text(sign_blob(load_private_key(key_path, b"pw"), iso.read_bytes()))
    ok = cli("verify-blob", "--key", str(pub), "--signature", str(sig), str(iso))
    assert ok.returncode == 0 and ok.stdout.startswith("Verified OK"), ok.stderr
    iso.write_bytes(iso.read_bytes()[:-1] + b"\x00")
    bad = cli("verify-blob", "--key", str(pub), "--signature", str(sig), str(iso))
    assert bad.returncode == 1 and "invalid signature" in bad.stderr


def _sealed_key(password: bytes, params: object, *, salt: bytes = b"s" * 32) -> bytes:
    """An encrypted key written out by hand (not by our writer) with chosen KDF params."""
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    n = params.get("N") if isinstance(params, dict) else None
    cost = n if isinstance(n, int) and n in (2, 32768, 131072) else 65536
    key = hashlib.scrypt(password, salt=salt, n=cost, r=8, p=1, maxmem=2**28, dklen=32)
    nonce = b"n" * 24
    sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
    body = json.dumps({
        "kdf": {"name": "scrypt", "params": params, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }).encode()  # fmt: skip
    b64 = base64.encodebytes(body).decode()
    pem = f"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{b64}"
    return (pem + "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n").encode()


def test_only_the_scrypt_parameters_cosign_writes_are_accepted(tmp_path: Path) -> None:
    """cosign's key library reads N=2^15, 2^16, 2^17 with r=8 p=1; an N=2 key (a password
    that costs nothing to guess) and odd values are refused with a KeyFileError naming
    the file, never a bare ValueError."""
    for n in (32768, 131072):
        assert parse_private_key(_sealed_key(b"pw", {"N": n, "r": 8, "p": 1}), b"pw")
    path = tmp_path / "weak.key"
    path.write_bytes(_sealed_key(b"pw", {"N": 2, "r": 8, "p": 1}))
    with pytest.raises(KeyFileError, match=r"N=2 r=8 p=1 are not what cosign writes") as info:
        load_private_key(path, b"pw")
    assert str(info.value).startswith(f"{path}: ")
    odd: list[object] = [
        {"N": 3, "r": 8, "p": 1},
        {"N": -65536, "r": 8, "p": 1},
        {"N": "65536", "r": 8, "p": 1},
        {"N": 65536.0, "r": 8, "p": 1},
        {"N": True, "r": 8, "p": 1},
        {"N": 65536, "r": 0, "p": 1},
        {"N": 65536, "r": 8, "p": 2**40},
        {"N": 65536},
        [],
        None,
    ]
    for params in odd:
        with pytest.raises(KeyFileError):
            parse_private_key(_sealed_key(b"pw", params), b"pw", source="odd.key")
    with pytest.raises(KeyFileError, match="salt of 16 bytes"):
        parse_private_key(_sealed_key(b"pw", {"N": 65536, "r": 8, "p": 1}, salt=b"x" * 16), b"pw")


def test_key_file_is_decrypted_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cloudboot up` asks for the key three times (publish, boot.iso, watcher): one scrypt."""
    from publisher import signing

    key = tmp_path / "cosign.key"
    signing.write_key_pair(key, tmp_path / "cosign.pub", b"pw")
    asked: list[int] = []

    def password(**_: object) -> bytes:
        asked.append(1)
        return b"pw"

    monkeypatch.setattr(signing, "read_password", password)
    first = signing.load_key_file(key)
    assert signing.load_key_file(key) is first and len(asked) == 1
    signing.write_key_pair(key, tmp_path / "cosign.pub", b"pw", force=True)  # a new key
    second = signing.load_key_file(key)
    assert second is not first and len(asked) == 2
    assert second.public_pem == (tmp_path / "cosign.pub").read_bytes()
