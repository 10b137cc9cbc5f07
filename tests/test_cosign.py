"""guest.contract.cosign + guest.contract.pubkey: payloads, tags, and pure-Python verification.

Every algorithm is cross-checked against ``cryptography`` (signatures it makes must verify
here; tampered ones must not), since the guest cannot carry ``cryptography`` itself.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings, strategies as st

from guest.contract import cosign
from guest.contract.errors import FormatError
from guest.contract.oci import digest_of
from guest.contract.pubkey import EcdsaP256Key, Ed25519Key, RsaKey, load_public_key

DIGEST = "sha256:" + "0123456789abcdef" * 4
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_payload_is_cosigns_serialisation() -> None:
    data = cosign.payload("127.0.0.1:5000/me/plan", DIGEST)
    assert data == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/me/plan"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    parsed = cosign.parse_payload(data)
    assert (parsed.docker_reference, parsed.manifest_digest) == ("127.0.0.1:5000/me/plan", DIGEST)


def test_signature_tag() -> None:
    assert cosign.signature_tag(DIGEST) == "sha256-" + "0123456789abcdef" * 4 + ".sig"
    with pytest.raises(FormatError):
        cosign.signature_tag("sha256:nothex")


def test_verify_payload_rejects_other_digest_and_identity() -> None:
    data = cosign.payload("r.io/a", DIGEST)
    cosign.verify_payload(data, DIGEST)
    cosign.verify_payload(data, DIGEST, "r.io/a")
    with pytest.raises(cosign.DigestMismatchError, match="not sha256:"):
        cosign.verify_payload(data, digest_of(b"other"))
    with pytest.raises(cosign.DigestMismatchError, match=r"names 'r\.io/a'"):
        cosign.verify_payload(data, DIGEST, "r.io/b")
    with pytest.raises(FormatError, match="type"):
        cosign.verify_payload(data.replace(b"cosign container", b"other"), DIGEST)


def test_ecdsa_cross_check_with_cryptography() -> None:
    key = load_public_key(pem(EC_KEY))
    assert isinstance(key, EcdsaP256Key)
    data = cosign.payload("r.io/a", DIGEST)
    sig = EC_KEY.sign(data, ec.ECDSA(hashes.SHA256()))
    assert cosign.verify_signature(key, data, b64(sig))
    assert not cosign.verify_signature(key, data + b" ", b64(sig))
    other = load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    assert not cosign.verify_signature(other, data, b64(sig))
    assert not cosign.verify_signature(key, data, "not base64!")
    assert not cosign.verify_signature(key, data, b64(sig[:-1] + bytes([sig[-1] ^ 1])))


@settings(max_examples=25, deadline=None)
@given(message=st.binary(max_size=200), flip=st.integers(0, 7))
def test_ecdsa_random_messages(message: bytes, flip: int) -> None:
    key = load_public_key(pem(EC_KEY))
    sig = EC_KEY.sign(message, ec.ECDSA(hashes.SHA256()))
    assert key.verify(message, sig)
    assert not key.verify(message + bytes([flip]), sig)


def test_compressed_ec_point() -> None:
    raw = EC_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    full = load_public_key(pem(EC_KEY))
    assert EcdsaP256Key.from_point(raw) == full
    with pytest.raises(FormatError, match="not on the P-256 curve"):
        EcdsaP256Key.from_point(b"\x04" + b"\x01" * 64)


def test_rsa_cross_check_with_cryptography() -> None:
    key = load_public_key(pem(RSA_KEY))
    assert isinstance(key, RsaKey)
    sig = RSA_KEY.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    assert cosign.verify_signature(key, b"payload", b64(sig))
    assert not cosign.verify_signature(key, b"payloaD", b64(sig))
    pss = RSA_KEY.sign(b"payload", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    assert not cosign.verify_signature(key, b"payload", b64(pss))
    pkcs1 = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert load_public_key(pkcs1) == key


def test_ed25519_cross_check_with_cryptography() -> None:
    key = load_public_key(pem(ED_KEY))
    assert isinstance(key, Ed25519Key)
    sig = ED_KEY.sign(b"payload")
    assert cosign.verify_signature(key, b"payload", b64(sig))
    assert not cosign.verify_signature(key, b"payloae", b64(sig))
    assert not cosign.verify_signature(key, b"payload", b64(sig[:32] + bytes(32)))


def test_public_key_errors() -> None:
    with pytest.raises(FormatError, match="no PEM block"):
        load_public_key(b"hello")
    with pytest.raises(FormatError, match="no PUBLIC KEY block"):
        load_public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(FormatError, match="not P-256"):
        load_public_key(pem(p384))


def test_signature_manifest_round_trip_and_check() -> None:
    data = cosign.payload("r.io/a", DIGEST)
    good = b64(EC_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    foreign = cosign.payload("r.io/a", digest_of(b"else"))
    foreign_sig = b64(EC_KEY.sign(foreign, ec.ECDSA(hashes.SHA256())))
    manifest, config = cosign.signature_manifest([(foreign, foreign_sig), (data, good)])
    assert json.loads(config)["rootfs"]["diff_ids"] == [digest_of(foreign), digest_of(data)]
    layers = cosign.signature_layers(type(manifest).from_bytes(bytes(manifest)))
    assert [layer.signature_b64 for layer in layers] == [foreign_sig, good]
    assert layers[1].descriptor.digest == digest_of(data)
    key = load_public_key(pem(EC_KEY))
    blobs = {digest_of(data): data, digest_of(foreign): foreign}
    pairs = [(blobs[layer.descriptor.digest], layer.signature_b64) for layer in layers]
    assert cosign.check_signatures(key, DIGEST, pairs).manifest_digest == DIGEST
    with pytest.raises(cosign.DigestMismatchError):
        cosign.check_signatures(key, DIGEST, pairs[:1])
    with pytest.raises(cosign.NoSignatureError):
        cosign.check_signatures(key, DIGEST, [])
    wrong = load_public_key(pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(cosign.BadSignatureError, match="none of 2 signature"):
        cosign.check_signatures(wrong, DIGEST, pairs)


def test_optional_section_pins_version_and_the_freshest_signature_wins() -> None:
    """Our signed ``optional`` keys; malformed entries are not trusted; of two valid
    signatures of one digest the higher version is what the guest reads (an older one
    left in the signature tag must not shadow a re-pinning)."""
    other = "sha256:" + "f" * 64
    old = cosign.payload("r.io/p", DIGEST, cosign.trust_optional({"r.io/k:1": other}, 5))
    new = cosign.payload("r.io/p", DIGEST, cosign.trust_optional({"r.io/k:1": DIGEST}, 9))
    assert json.loads(new)["optional"] == {
        "dev.cloudboot.pins": {"r.io/k:1": DIGEST},
        "dev.cloudboot.version": 9,
    }
    key = load_public_key(pem(EC_KEY))
    pairs = [(d, b64(EC_KEY.sign(d, ec.ECDSA(hashes.SHA256())))) for d in (new, old)]
    for order in (pairs, pairs[::-1]):
        chosen = cosign.check_signatures(key, DIGEST, order)
        assert (chosen.version, chosen.pins) == (9, {"r.io/k:1": DIGEST})
    odd = cosign.parse_payload(
        cosign.payload(
            "r.io/p",
            DIGEST,
            {
                "dev.cloudboot.pins": {"a": "md5:x", "b": 3, "c": DIGEST},
                "dev.cloudboot.version": -1,
            },
        )
    )
    assert odd.pins == {"c": DIGEST} and odd.version is None
    for version in (True, "9", 1.5):
        raw = cosign.payload("r.io/p", DIGEST, {"dev.cloudboot.version": version})
        assert cosign.parse_payload(raw).version is None
    assert cosign.parse_payload(cosign.payload("r.io/p", DIGEST)).optional is None
