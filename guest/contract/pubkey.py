"""Public keys and signature checks in pure Python: SPKI (DER/PEM), ECDSA P-256, RSA, Ed25519.

The guest initramfs carries only the standard library, not ``cryptography``, yet it must
verify cosign signatures before it trusts a plan. Verification needs no secrets and no
constant-time care, so a small, readable implementation of the three algorithms the
upstream guest accepts is enough; tests cross-check every one against ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from guest.contract.errors import FormatError

# --- DER (only what SubjectPublicKeyInfo and ECDSA signatures use) -------------------------

_SEQUENCE, _INTEGER, _BIT_STRING, _NULL, _OID = 0x30, 0x02, 0x03, 0x05, 0x06

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_PRIME256V1 = "1.2.840.10045.3.1.7"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_ED25519 = "1.3.101.112"


def _der_read(data: bytes, pos: int, what: str) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: (tag, value, position after it)."""
    if pos + 2 > len(data):
        raise FormatError("truncated DER element", offset=pos, what=what)
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:  # DER, not BER: no indefinite form, and the shortest long form only
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise FormatError("bad DER length", offset=pos - 1, what=what)
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise FormatError("non-minimal DER length", offset=pos - 1, what=what)
        pos += count
    if pos + length > len(data):
        raise FormatError("DER element runs past the end", offset=pos, what=what)
    return tag, data[pos : pos + length], pos + length


def _der_expect(data: bytes, pos: int, tag: int, what: str) -> tuple[bytes, int]:
    got, value, end = _der_read(data, pos, what)
    if got != tag:
        raise FormatError(f"DER tag {got:#04x}, expected {tag:#04x}", offset=pos, what=what)
    return value, end


def _der_sequence(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """The elements of a SEQUENCE that must span all of ``data``."""
    body, end = _der_expect(data, 0, _SEQUENCE, what)
    if end != len(data):
        raise FormatError("trailing bytes after DER SEQUENCE", offset=end, what=what)
    items, pos = [], 0
    while pos < len(body):
        tag, value, pos = _der_read(body, pos, what)
        items.append((tag, value))
    return items


def _der_oid(value: bytes) -> str:
    first, parts, acc = value[0], [], 0
    parts += [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    for byte in value[1:]:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(acc)
            acc = 0
    return ".".join(map(str, parts))


def _der_uint(value: bytes, what: str) -> int:
    """A non-negative INTEGER in its one DER form (a leading zero only before a high bit).

    BER's padded forms must be refused in signatures: accepting them makes a signature
    malleable (many byte strings for one (r, s)), which Wycheproof tests for.
    """
    if not value or value[0] & 0x80:
        raise FormatError("DER INTEGER is empty or negative", what=what)
    if len(value) > 1 and value[0] == 0 and not value[1] & 0x80:
        raise FormatError("DER INTEGER has a superfluous leading zero", what=what)
    return int.from_bytes(value, "big")


# --- PEM -------------------------------------------------------------------------------------

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block in ``data`` as (type, DER bytes)."""
    blocks = []
    for match in _PEM_RE.finditer(data):
        body = re.sub(rb"\s+", b"", match.group(2))
        try:
            blocks.append((match.group(1).decode(), base64.b64decode(body, validate=True)))
        except binascii.Error as exc:
            raise FormatError(
                f"bad base64 in PEM block: {exc}", offset=match.start(2), what="PEM"
            ) from None
    return blocks


def pem_encode(kind: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {kind}-----".encode(), *lines, f"-----END {kind}-----".encode()])
        + b"\n"
    )


# --- P-256 -----------------------------------------------------------------------------------

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)

_Jacobian = tuple[int, int, int]
_INFINITY: _Jacobian = (1, 1, 0)


def _jdouble(p: _Jacobian) -> _Jacobian:
    x, y, z = p
    if z == 0 or y == 0:
        return _INFINITY
    ysq = y * y % _P
    s = 4 * x * ysq % _P
    zsq = z * z % _P
    m = 3 * (x - zsq) * (x + zsq) % _P  # a = -3
    nx = (m * m - 2 * s) % _P
    ny = (m * (s - nx) - 8 * ysq * ysq) % _P
    return nx, ny, 2 * y * z % _P


def _jadd(p: _Jacobian, q: _Jacobian) -> _Jacobian:
    if p[2] == 0:
        return q
    if q[2] == 0:
        return p
    x1, y1, z1 = p
    x2, y2, z2 = q
    z1sq, z2sq = z1 * z1 % _P, z2 * z2 % _P
    u1, u2 = x1 * z2sq % _P, x2 * z1sq % _P
    s1, s2 = y1 * z2sq * z2 % _P, y2 * z1sq * z1 % _P
    if u1 == u2:
        return _jdouble(p) if s1 == s2 else _INFINITY
    h, r = (u2 - u1) % _P, (s2 - s1) % _P
    hsq = h * h % _P
    hcu = hsq * h % _P
    nx = (r * r - hcu - 2 * u1 * hsq) % _P
    ny = (r * (u1 * hsq - nx) - s1 * hcu) % _P
    return nx, ny, h * z1 * z2 % _P


def _jmul_add(k1: int, p1: _Jacobian, k2: int, p2: _Jacobian) -> _Jacobian:
    """k1*p1 + k2*p2 by Shamir's trick: one shared double-and-add pass."""
    both = _jadd(p1, p2)
    acc = _INFINITY
    for bit in range(max(k1.bit_length(), k2.bit_length()) - 1, -1, -1):
        acc = _jdouble(acc)
        b1, b2 = (k1 >> bit) & 1, (k2 >> bit) & 1
        if b1 and b2:
            acc = _jadd(acc, both)
        elif b1:
            acc = _jadd(acc, p1)
        elif b2:
            acc = _jadd(acc, p2)
    return acc


@dataclass(frozen=True)
class EcdsaP256Key:
    """A P-256 public key (cosign's default), as its affine point."""

    x: int
    y: int

    algorithm = "ECDSA P-256"

    @classmethod
    def from_point(cls, point: bytes) -> EcdsaP256Key:
        what = "EC public key"
        if len(point) == 65 and point[0] == 4:
            x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
        elif len(point) == 33 and point[0] in (2, 3):
            x = int.from_bytes(point[1:], "big")
            y = pow((x * x * x + _A * x + _B) % _P, (_P + 1) // 4, _P)
            if y & 1 != point[0] & 1:
                y = _P - y
        else:
            raise FormatError("EC point is neither compressed nor uncompressed P-256", what=what)
        if not (x < _P and y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0):
            raise FormatError("EC point is not on the P-256 curve", what=what)
        return cls(x, y)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """ECDSA over SHA-256 of ``message``; ``signature`` is DER ``SEQUENCE{r, s}``."""
        try:
            items = _der_sequence(signature, "ECDSA signature")
            if len(items) != 2 or any(tag != _INTEGER for tag, _ in items):
                return False
            r, s = (_der_uint(v, "ECDSA signature") for _, v in items)
        except FormatError:
            return False
        if not (0 < r < _N and 0 < s < _N):
            return False
        e = int.from_bytes(hashlib.sha256(message).digest(), "big")
        w = pow(s, -1, _N)
        x, _, z = _jmul_add(e * w % _N, (*_G, 1), r * w % _N, (self.x, self.y, 1))
        if z == 0:
            return False
        affine_x = x * pow(z * z % _P, -1, _P) % _P
        return affine_x % _N == r


# --- RSA PKCS#1 v1.5 -------------------------------------------------------------------------

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True)
class RsaKey:
    """An RSA public key: modulus and exponent."""

    n: int
    e: int

    algorithm = "RSA PKCS#1 v1.5"

    @classmethod
    def from_pkcs1(cls, der: bytes) -> RsaKey:
        items = _der_sequence(der, "RSA public key")
        if len(items) != 2 or any(tag != _INTEGER for tag, _ in items):
            raise FormatError("RSA key is not SEQUENCE{n, e}", what="RSA public key")
        n, e = (_der_uint(v, "RSA public key") for _, v in items)
        return cls(n, e)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """RSASSA-PKCS1-v1_5 with SHA-256: compare the whole encoded block, not a parse."""
        k = (self.n.bit_length() + 7) // 8
        if len(signature) != k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        encoded = pow(s, self.e, self.n).to_bytes(k, "big")
        t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        if k < len(t) + 11:
            return False
        return encoded == b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


# --- Ed25519 (RFC 8032) ----------------------------------------------------------------------

_EP = 2**255 - 19
_EL = 2**252 + 27742317777372353535851937790883648493
_ED = -121665 * pow(121666, -1, _EP) % _EP
_SQRT_M1 = pow(2, (_EP - 1) // 4, _EP)
_EPoint = tuple[int, int, int, int]  # extended coordinates X, Y, Z, T


def _ed_add(p: _EPoint, q: _EPoint) -> _EPoint:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _EP
    b = (p[1] + p[0]) * (q[1] + q[0]) % _EP
    c = 2 * p[3] * q[3] * _ED % _EP
    d = 2 * p[2] * q[2] % _EP
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _EP, g * h % _EP, f * g % _EP, e * h % _EP


def _ed_mul(k: int, p: _EPoint) -> _EPoint:
    acc: _EPoint = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _ed_add(acc, p)
        p = _ed_add(p, p)
        k >>= 1
    return acc


def _ed_decode(data: bytes) -> _EPoint | None:
    y = int.from_bytes(data, "little") & ((1 << 255) - 1)
    sign = data[31] >> 7
    if y >= _EP:
        return None
    xx = (y * y - 1) * pow(_ED * y * y + 1, -1, _EP) % _EP
    x = pow(xx, (_EP + 3) // 8, _EP)
    if (x * x - xx) % _EP:
        x = x * _SQRT_M1 % _EP
    if (x * x - xx) % _EP or (x == 0 and sign):
        return None
    if x & 1 != sign:
        x = _EP - x
    return x, y, 1, x * y % _EP


def _ed_equal(p: _EPoint, q: _EPoint) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % _EP == 0 and (p[1] * q[2] - q[1] * p[2]) % _EP == 0


_ED_BASE = _ed_decode((4 * pow(5, -1, _EP) % _EP).to_bytes(32, "little"))


@dataclass(frozen=True)
class Ed25519Key:
    """An Ed25519 public key, as its 32 encoded bytes."""

    raw: bytes

    algorithm = "Ed25519"

    def verify(self, message: bytes, signature: bytes) -> bool:
        assert _ED_BASE is not None
        point = _ed_decode(self.raw) if len(self.raw) == 32 else None
        if point is None or len(signature) != 64:
            return False
        r_point = _ed_decode(signature[:32])
        s = int.from_bytes(signature[32:], "little")
        if r_point is None or s >= _EL:
            return False
        h = int.from_bytes(hashlib.sha512(signature[:32] + self.raw + message).digest(), "little")
        return _ed_equal(_ed_mul(s, _ED_BASE), _ed_add(r_point, _ed_mul(h % _EL, point)))


PublicKey = EcdsaP256Key | RsaKey | Ed25519Key


def public_key_from_spki(der: bytes) -> PublicKey:
    """Parse a DER SubjectPublicKeyInfo into one of the key types above."""
    what = "SubjectPublicKeyInfo"
    items = _der_sequence(der, what)
    if len(items) != 2 or items[0][0] != _SEQUENCE or items[1][0] != _BIT_STRING:
        raise FormatError("not SEQUENCE{AlgorithmIdentifier, BIT STRING}", what=what)
    alg_der = bytes([_SEQUENCE]) + _der_length(len(items[0][1])) + items[0][1]
    alg = _der_sequence(alg_der, what)
    if not alg or alg[0][0] != _OID:
        raise FormatError("AlgorithmIdentifier lacks an OID", what=what)
    oid = _der_oid(alg[0][1])
    bits = items[1][1]
    if not bits or bits[0] != 0:
        raise FormatError("public key BIT STRING has unused bits", what=what)
    key = bits[1:]
    if oid == OID_EC_PUBLIC_KEY:
        curve = _der_oid(alg[1][1]) if len(alg) > 1 and alg[1][0] == _OID else "?"
        if curve != OID_PRIME256V1:
            raise FormatError(f"EC curve {curve} is not P-256 (prime256v1)", what=what)
        return EcdsaP256Key.from_point(key)
    if oid == OID_RSA_ENCRYPTION:
        return RsaKey.from_pkcs1(key)
    if oid == OID_ED25519:
        if len(key) != 32:
            raise FormatError("Ed25519 key is not 32 bytes", what=what)
        return Ed25519Key(key)
    raise FormatError(f"unsupported public key algorithm {oid}", what=what)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def load_public_key(data: bytes) -> PublicKey:
    """A public key from PEM (``PUBLIC KEY`` or ``RSA PUBLIC KEY``) or raw DER SPKI."""
    blocks = pem_blocks(data)
    if not blocks:
        if data[:1] == bytes([_SEQUENCE]):
            return public_key_from_spki(data)
        raise FormatError("no PEM block and not DER", offset=0, what="public key")
    for kind, der in blocks:
        if kind == "PUBLIC KEY":
            return public_key_from_spki(der)
        if kind == "RSA PUBLIC KEY":
            return RsaKey.from_pkcs1(der)
    kinds = ", ".join(kind for kind, _ in blocks)
    raise FormatError(f"no PUBLIC KEY block (found: {kinds})", what="public key")
