"""LUKS1 and LUKS2 unlocked in userland: header -> key slot -> volume key (docs/disks.md).

Why not ``cryptsetup open``: that needs device-mapper, dm-crypt and a dozen shared
libraries in the initramfs, and a broken or hostile header would then be parsed by C
code in PID 1's lap. The format is small (a binary header, for LUKS2 a JSON document;
PBKDF2 or Argon2id; an anti-forensic split; AES-XTS): ``hashlib`` has PBKDF2, and the
guest's own libcrypto and Debian's libargon2 the rest (``native``); the data is read through
``cryptstream.DecryptedStream`` by the same userland filesystem readers as a plain disk.

The header is untrusted: its sizes, KDF costs and stripe counts are capped before any
work is done, Argon2 may not ask for more memory than the guest has to spare, and every
failure names the device, never the passphrase.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

from guest.agent.volumes.cryptstream import SectorCipher
from guest.contract.errors import CloudbootError

LUKS_MAGIC = b"LUKS\xba\xbe"
#: Where LUKS2 may keep its second header (the spec's fixed list of metadata sizes).
LUKS2_HEADER_SIZES = tuple(0x4000 << n for n in range(9))  # 16 KiB .. 4 MiB
MAX_KEY_BYTES = 64
MAX_STRIPES = 4000 * 4  # cryptsetup writes 4000
MAX_PBKDF2_ITERATIONS = 50_000_000
MAX_ARGON2_TIME = 64
MAX_ARGON2_MEMORY_KIB = 4 << 20  # LUKS2 itself refuses more than 4 GiB
MAX_ARGON2_LANES = 16
MAX_KEYSLOTS = 32
_LUKS1_KEYSLOT = struct.Struct(">II32sII")  # active, iterations, salt, offset, stripes
_LUKS1_ACTIVE = 0x00AC71F3
_SECTOR = 512


class LuksError(CloudbootError):
    pass


class WrongPassphraseError(LuksError):
    pass


@dataclass(frozen=True)
class Kdf:
    """How a passphrase becomes a key slot's key: PBKDF2 (LUKS1, LUKS2) or Argon2."""

    kind: str  # "pbkdf2", "argon2id", "argon2i"
    salt: bytes
    hash: str = "sha256"  # pbkdf2
    iterations: int = 0  # pbkdf2 iterations or argon2 time cost
    memory_kib: int = 0  # argon2
    lanes: int = 1  # argon2


@dataclass(frozen=True)
class Keyslot:
    """One key slot: KDF, the key material's place and cipher, its anti-forensic split."""

    name: str
    kdf: Kdf
    area_offset: int
    area_cipher: str
    area_key_bytes: int
    stripes: int
    af_hash: str
    key_bytes: int


@dataclass(frozen=True)
class Header:
    """What opening a LUKS device needs: slots, how to check a volume key, the data."""

    version: int
    keyslots: tuple[Keyslot, ...]
    digest: Kdf  # pbkdf2 over the volume key
    digest_value: bytes
    data_offset: int
    data_size: int | None  # None = to the end of the device
    cipher: str
    sector_size: int
    iv_offset: int = 0  # LUKS2 segment iv_tweak

    @property
    def key_bytes(self) -> int:
        return self.keyslots[0].key_bytes if self.keyslots else 0


def is_luks(head: bytes) -> bool:
    return head[:6] == LUKS_MAGIC


def _cap(value: int, top: int, what: str, where: str, bottom: int = 1) -> int:
    if not bottom <= value <= top:
        raise LuksError(f"{what} {value} is outside {bottom}..{top}", where=where)
    return value


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def parse_luks1(head: bytes, where: str) -> Header:
    """The 592-byte LUKS1 header (big-endian fields, eight fixed key slots)."""
    if len(head) < 592:
        raise LuksError("LUKS1 header is cut short", where=where)
    cipher = f"{_cstr(head[8:40])}-{_cstr(head[40:72])}"
    hash_name = _cstr(head[72:104])
    payload, key_bytes = struct.unpack_from(">II", head, 104)
    _cap(key_bytes, MAX_KEY_BYTES, "key size", where)
    digest, digest_salt = head[112:132], head[132:164]
    (digest_iter,) = struct.unpack_from(">I", head, 164)
    slots = []
    for i in range(8):
        active, iterations, salt, offset, stripes = _LUKS1_KEYSLOT.unpack_from(head, 208 + 48 * i)
        if active != _LUKS1_ACTIVE:
            continue
        _cap(iterations, MAX_PBKDF2_ITERATIONS, f"key slot {i} iterations", where)
        _cap(stripes, MAX_STRIPES, f"key slot {i} stripes", where)
        kdf = Kdf("pbkdf2", salt, hash_name, iterations)
        slots.append(
            Keyslot(str(i), kdf, offset * _SECTOR, cipher, key_bytes, stripes, hash_name, key_bytes)
        )
    _cap(digest_iter, MAX_PBKDF2_ITERATIONS, "digest iterations", where)
    return Header(
        1, tuple(slots), Kdf("pbkdf2", digest_salt, hash_name, digest_iter), digest,
        payload * _SECTOR, None, cipher, _SECTOR,
    )  # fmt: skip


def luks2_json_area(head: bytes, where: str) -> tuple[int, bytes]:
    """(header size, JSON text) of a LUKS2 binary header, its checksum checked."""
    if len(head) < 4096:
        raise LuksError("LUKS2 header is cut short", where=where)
    (hdr_size,) = struct.unpack_from(">Q", head, 8)
    if hdr_size not in LUKS2_HEADER_SIZES:
        raise LuksError(f"LUKS2 header size {hdr_size} is not one LUKS2 allows", where=where)
    if len(head) < hdr_size:
        raise LuksError(f"LUKS2 header of {hdr_size} bytes is cut short", where=where)
    algorithm = _cstr(head[72:104])
    if algorithm not in ("sha256", "sha1", "sha512"):
        raise LuksError(f"LUKS2 header checksum {algorithm!r} is not supported", where=where)
    blanked = head[:0x1C0] + bytes(64) + head[0x200:hdr_size]
    want = head[0x1C0 : 0x1C0 + hashlib.new(algorithm).digest_size]
    if not hmac.compare_digest(hashlib.new(algorithm, blanked).digest(), want):
        raise LuksError("LUKS2 header checksum does not match (damaged header)", where=where)
    return hdr_size, head[4096:hdr_size].split(b"\0", 1)[0]


def _int(value: Any, what: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise LuksError(f"LUKS2 {what} is not a number: {value!r}", where=where) from exc


def _b64(value: Any, what: str, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise LuksError(f"LUKS2 {what} is not base64", where=where) from exc


def parse_luks2(text: bytes, where: str) -> Header:
    """The LUKS2 JSON metadata: the first crypt segment and the slots its digest covers."""
    try:
        doc = json.loads(text)
        config = doc.get("config", {})
        required = config.get("requirements", {}).get("mandatory", [])
        if required:
            raise LuksError(
                f"LUKS2 requirements {required} (an unfinished reencryption?)", where=where
            )
        segments = sorted(doc["segments"].items(), key=lambda kv: _int(kv[0], "segment", where))
        if len(segments) != 1 or segments[0][1].get("type") != "crypt":
            raise LuksError("LUKS2 data must be one crypt segment", where=where)
        seg_id, segment = segments[0]
        digests = [d for d in doc["digests"].values() if seg_id in d.get("segments", [])]
        if len(digests) != 1 or digests[0].get("type") != "pbkdf2":
            raise LuksError("LUKS2 segment needs exactly one pbkdf2 digest", where=where)
        digest = digests[0]
        dkdf = Kdf("pbkdf2", _b64(digest["salt"], "digest salt", where), str(digest["hash"]),
                   _cap(_int(digest["iterations"], "iterations", where),
                        MAX_PBKDF2_ITERATIONS, "digest iterations", where))  # fmt: skip
        if len(doc["keyslots"]) > MAX_KEYSLOTS:
            raise LuksError(f"more than {MAX_KEYSLOTS} key slots", where=where)
        slots = []
        for name in sorted(digest.get("keyslots", []), key=lambda n: _int(n, "key slot", where)):
            slot = doc["keyslots"][name]
            if slot.get("type") != "luks2" or slot["area"].get("type") != "raw":
                continue
            slots.append(_luks2_slot(str(name), slot, where))
        size = segment["size"]
        sector = _int(segment.get("sector_size", 512), "sector size", where)
        if sector not in (512, 1024, 2048, 4096):
            raise LuksError(f"LUKS2 sector size {sector} is not supported", where=where)
        return Header(
            2, tuple(slots), dkdf, _b64(digest["digest"], "digest", where),
            _int(segment["offset"], "segment offset", where),
            None if size == "dynamic" else _int(size, "segment size", where),
            str(segment["encryption"]), sector, _int(segment.get("iv_tweak", 0), "iv", where),
        )  # fmt: skip
    except LuksError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LuksError(
            f"LUKS2 metadata is malformed ({type(exc).__name__}: {exc})", where=where
        ) from exc


def _luks2_slot(name: str, slot: dict[str, Any], where: str) -> Keyslot:
    kdf_doc, area, af = slot["kdf"], slot["area"], slot["af"]
    what = f"key slot {name}"
    salt = _b64(kdf_doc["salt"], f"{what} salt", where)
    if kdf_doc["type"] == "pbkdf2":
        iterations = _int(kdf_doc["iterations"], "iterations", where)
        _cap(iterations, MAX_PBKDF2_ITERATIONS, f"{what} iterations", where)
        kdf = Kdf("pbkdf2", salt, str(kdf_doc["hash"]), iterations)
    elif kdf_doc["type"] in ("argon2id", "argon2i"):
        kdf = Kdf(
            str(kdf_doc["type"]), salt, "",
            _cap(_int(kdf_doc["time"], "time", where), MAX_ARGON2_TIME, f"{what} time", where),
            _cap(_int(kdf_doc["memory"], "memory", where), MAX_ARGON2_MEMORY_KIB,
                 f"{what} memory (KiB)", where, bottom=8),
            _cap(_int(kdf_doc["cpus"], "cpus", where), MAX_ARGON2_LANES, f"{what} cpus", where),
        )  # fmt: skip
    else:
        raise LuksError(f"{what}: KDF {kdf_doc['type']!r} is not supported", where=where)
    if af.get("type") != "luks1":
        raise LuksError(f"{what}: anti-forensic split {af.get('type')!r}", where=where)
    key_bytes = _cap(_int(slot["key_size"], "key size", where), MAX_KEY_BYTES, "key size", where)
    return Keyslot(
        name, kdf, _int(area["offset"], "area offset", where), str(area["encryption"]),
        _cap(_int(area["key_size"], "area key", where), MAX_KEY_BYTES, "area key size", where),
        _cap(_int(af["stripes"], "stripes", where), MAX_STRIPES, f"{what} stripes", where),
        str(af["hash"]), key_bytes,
    )  # fmt: skip


def derive(kdf: Kdf, secret: bytes, length: int) -> bytes:
    if kdf.kind == "pbkdf2":
        return hashlib.pbkdf2_hmac(kdf.hash, secret, kdf.salt, kdf.iterations, length)
    from guest.agent.volumes.native import argon2

    return argon2(kdf.kind, secret, kdf.salt, kdf.iterations, kdf.memory_kib, kdf.lanes, length)


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """Undo the anti-forensic split: XOR and diffuse each stripe into the next."""
    digest_size = hashlib.new(hash_name).digest_size
    acc = bytes(key_bytes)
    for i in range(stripes):
        stripe = material[i * key_bytes : (i + 1) * key_bytes]
        # XOR as one integer operation: a byte loop is 4000 x 64 Python steps under TCG
        mixed = int.from_bytes(acc, "little") ^ int.from_bytes(stripe, "little")
        acc = mixed.to_bytes(key_bytes, "little")
        if i == stripes - 1:
            return acc
        acc = b"".join(
            hashlib.new(hash_name, j.to_bytes(4, "big") + acc[o : o + digest_size]).digest()[
                : len(acc[o : o + digest_size])
            ]
            for j, o in enumerate(range(0, key_bytes, digest_size))
        )
    return acc


def material_size(slot: Keyslot) -> int:
    raw = slot.key_bytes * slot.stripes
    return -(-raw // _SECTOR) * _SECTOR


def try_keyslot(
    header: Header, slot: Keyslot, passphrase: bytes, material: bytes, where: str
) -> bytes | None:
    """The volume key if ``passphrase`` opens ``slot`` (``material`` = its area's bytes)."""
    key = derive(slot.kdf, passphrase, slot.area_key_bytes)
    plain = SectorCipher.make(slot.area_cipher, key, _SECTOR, where).decrypt(material, 0)
    candidate = af_merge(plain, slot.key_bytes, slot.stripes, slot.af_hash)
    check = derive(header.digest, candidate, len(header.digest_value))
    return candidate if hmac.compare_digest(check, header.digest_value) else None
