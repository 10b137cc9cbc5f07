"""cosign-compatible signing keys: generate, encrypt, load, sign (docs/wire-formats.md §3.3).

Keys are written exactly as ``cosign generate-key-pair`` writes them (PKCS#8 DER sealed
with nacl secretbox under an scrypt-derived key, PEM type ``ENCRYPTED SIGSTORE PRIVATE
KEY``), so a key made here works with cosign and the other way round. Plain PKCS#8 PEM
keys are read too. Passwords come from ``COSIGN_PASSWORD`` or a prompt, never argv.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import json
import os
import secrets
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from guest.contract.oci import canonical_json
from guest.contract.pubkey import pem_blocks, pem_encode

ENCRYPTED_PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
PLAIN_PEM_TYPES = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 65536, 8, 1
#: The scrypt (N, r, p) sets cosign's key library reads (go-securesystemslib
#: ``encrypted``: legacy, standard, OWASP) and nothing else: a key file chooses its own
#: KDF cost, so an N=2 key would be a password guessable at line speed, and a huge N a
#: memory bomb.
SCRYPT_ACCEPTED = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
SALT_BYTES, NONCE_BYTES = 32, 24
PASSWORD_ENV = "COSIGN_PASSWORD"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(CloudbootError):
    """A key file that cannot be read, decrypted or used; names the file."""


@dataclass(frozen=True)
class SigningKey:
    private: PrivateKey
    source: str = ""

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def encrypt_private_key(pkcs8_der: bytes, password: bytes) -> bytes:
    """Seal PKCS#8 DER the way cosign does and wrap it as ``ENCRYPTED SIGSTORE PRIVATE KEY``."""
    salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = nacl.secret.SecretBox(key).encrypt(pkcs8_der, nonce).ciphertext

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    body = canonical_json(
        {
            "kdf": {
                "name": "scrypt",
                "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                "salt": b64(salt),
            },
            "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
            "ciphertext": b64(sealed),
        }
    )
    return pem_encode(ENCRYPTED_PEM_TYPES[0], body)


def decrypt_private_key(body: bytes, password: bytes, *, source: str = "key") -> bytes:
    """PKCS#8 DER from the JSON body of an encrypted cosign key."""
    try:
        doc = json.loads(body)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        sealed = base64.b64decode(doc["ciphertext"], validate=True)
        n, r, p = params["N"], params["r"], params["p"]
        kdf_name, cipher_name = kdf.get("name"), cipher.get("name")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyFileError(
            f"encrypted key body is not cosign's JSON format ({type(exc).__name__}: {exc})",
            where=source,
        ) from None
    if kdf_name != "scrypt" or cipher_name != "nacl/secretbox":
        raise KeyFileError(
            f"unsupported kdf/cipher {kdf_name!r}/{cipher_name!r}; cosign writes"
            " scrypt/nacl/secretbox",
            where=source,
        )
    if not all(type(v) is int for v in (n, r, p)) or (n, r, p) not in SCRYPT_ACCEPTED:
        accepted = ", ".join(f"N={a} r={b} p={c}" for a, b, c in SCRYPT_ACCEPTED)
        raise KeyFileError(
            f"scrypt parameters N={n!r} r={r!r} p={p!r} are not what cosign writes"
            f" (accepted: {accepted})",
            where=source,
        )
    if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES:
        raise KeyFileError(
            f"salt of {len(salt)} bytes / nonce of {len(nonce)} bytes; cosign writes"
            f" {SALT_BYTES} / {NONCE_BYTES}",
            where=source,
        )
    try:
        return nacl.secret.SecretBox(_scrypt(password, salt, n, r, p)).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(
            f"wrong password (decryption failed; password from ${PASSWORD_ENV} or the prompt)",
            where=source,
        ) from None


def generate_key_pair(password: bytes) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair: (encrypted private PEM, public PEM), as cosign makes."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return encrypt_private_key(der, password), SigningKey(private).public_pem


def _check_supported(private: object, source: str) -> PrivateKey:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise KeyFileError(f"EC key on {private.curve.name}, cosign needs P-256", where=source)
        return private
    if isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return private
    raise KeyFileError(f"unsupported key type {type(private).__name__}", where=source)


def parse_private_key(data: bytes, password: bytes | None, *, source: str = "key") -> SigningKey:
    """Read a cosign encrypted key or a plain (PKCS#8/SEC1/PKCS#1) PEM private key."""
    blocks = pem_blocks(data)
    for kind, der in blocks:
        if kind in ENCRYPTED_PEM_TYPES:
            if password is None:
                raise KeyFileError(f"key is encrypted: set ${PASSWORD_ENV}", where=source)
            der = decrypt_private_key(der, password, source=source)
            private = serialization.load_der_private_key(der, password=None)
            return SigningKey(_check_supported(private, source), source)
        if kind in PLAIN_PEM_TYPES:
            try:
                private = serialization.load_pem_private_key(data, password=None)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise KeyFileError(f"cannot parse {kind}: {exc}", where=source) from None
            return SigningKey(_check_supported(private, source), source)
    kinds = ", ".join(k for k, _ in blocks) or "no PEM block"
    raise KeyFileError(f"not a private key (found: {kinds})", where=source)


def is_encrypted(data: bytes) -> bool:
    return any(kind in ENCRYPTED_PEM_TYPES for kind, _ in pem_blocks(data))


_loaded: dict[tuple[Path, int, int, int, int], SigningKey] = {}
_loading = threading.Lock()


def load_key_file(path: Path) -> SigningKey:
    """The key at ``path``, read and decrypted once per process.

    The password (``$COSIGN_PASSWORD``, else the terminal) is asked for only when the key
    is encrypted, and without ``$COSIGN_PASSWORD`` only when the empty password does not
    open it: `cloudboot up` makes its key with an empty password when none is set, and
    the next `up`, a `publish` from a script or the watcher's service must not then ask
    for (or, with no terminal, fail for) a password nobody chose. `cloudboot up` needs
    the key for publishing, for boot.iso's signature and for the watcher: one scrypt
    derivation and one prompt, not three. The key is
    known by the file's identity (device, inode, mtime, size), so a replaced key file is
    read again (a SIGHUP reload after `cloudboot key generate --force`).
    """
    with _loading:
        try:
            st = path.stat()
            identity = (path.resolve(), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            key = _loaded.get(identity)
            data = path.read_bytes() if key is None else b""
        except OSError as exc:
            raise KeyFileError(f"cannot read key: {exc.strerror}", where=str(path)) from None
        if key is None:
            key = _loaded[identity] = _open_key(data, path)
    return key


def _open_key(data: bytes, path: Path) -> SigningKey:
    if not is_encrypted(data):
        return parse_private_key(data, None, source=str(path))
    if PASSWORD_ENV not in os.environ:
        with contextlib.suppress(KeyFileError):  # not empty: ask, or say it is needed
            return parse_private_key(data, b"", source=str(path))
    return parse_private_key(data, read_password(key=path), source=str(path))


def sign(key: SigningKey, data: bytes) -> bytes:
    """The raw signature cosign makes: ECDSA/SHA-256 DER, RSA PKCS#1 v1.5/SHA-256, Ed25519."""
    private = key.private
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return private.sign(data)


def verify_own(key: SigningKey, data: bytes, signature_b64: str) -> bool:
    """Whether ``key`` made this signature, checked with ``cryptography``.

    The guest's verifier is pure Python (it runs in the initramfs) and costs ~10 ms per
    ECDSA check; a publish of a thousand unchanged plans checks a thousand signatures.
    """
    try:
        raw = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    public = key.private.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            public.verify(raw, data)
    except InvalidSignature:
        return False
    return True


def sign_blob(key: SigningKey, data: bytes) -> str:
    """``cosign sign-blob`` output: standard base64 of the signature over ``data``."""
    return base64.b64encode(sign(key, data)).decode()


def read_password(
    *, confirm: bool = False, env: Mapping[str, str] | None = None, key: Path | None = None
) -> bytes:
    """``$COSIGN_PASSWORD`` if set (empty allowed, as cosign), else ask on the terminal;
    ``key`` is the file the password is for, named when there is no terminal to ask on."""
    env = os.environ if env is None else env
    if PASSWORD_ENV in env:
        return env[PASSWORD_ENV].encode()
    if not sys.stdin.isatty():
        raise KeyFileError(
            f"no terminal to ask for the key password: set ${PASSWORD_ENV}",
            where=None if key is None else str(key),
        )
    first = getpass.getpass("Enter password for private key: ")
    if confirm and getpass.getpass("Enter password for private key again: ") != first:
        raise KeyFileError("passwords do not match")
    return first.encode()


def write_key_pair(
    private_path: Path, public_path: Path, password: bytes, *, force: bool = False
) -> None:
    """``cosign.key`` (0600) and ``cosign.pub``; refuse to overwrite unless ``force``."""
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise KeyFileError("already exists (use --force to overwrite)", where=str(path))
    private_pem, public_pem = generate_key_pair(password)
    # durable: a crash right after `key generate` must not lose the only copy of the key
    write_atomic(private_path, private_pem, durable=True, mode=0o600)
    write_atomic(public_path, public_pem, durable=True, mode=0o644)
