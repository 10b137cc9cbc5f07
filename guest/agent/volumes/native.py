"""Argon2 and AES-XTS from the C libraries the guest carries, through ``ctypes``.

The guest's Python is Debian's, with no ``cryptography`` (a 4+ MB compiled wheel every
boot would decompress); Debian's ``libcrypto.so.3`` is already in the initramfs (``_ssl``
and ``_hashlib`` link it) and has AES-XTS, and ``libargon2.so.1`` (Debian libargon2-1,
~40 KB, the library cryptsetup itself uses) has Argon2. Pure-Python Argon2 over tens of
MiB under TCG would take minutes. The libraries are loaded only when a LUKS volume is
opened; they resolve through the initramfs's ``LD_LIBRARY_PATH`` as on a host.
"""

from __future__ import annotations

import ctypes
import functools

from guest.contract.errors import CloudbootError

_ARGON2_TYPES = {"argon2i": 1, "argon2id": 2}
_ARGON2_VERSION_13 = 0x13


class NativeError(CloudbootError):
    pass


@functools.cache
def _library(soname: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(soname)
    except OSError as exc:
        raise NativeError(f"cannot load {soname}: {exc}") from exc


def argon2(
    kind: str, secret: bytes, salt: bytes, time_cost: int, memory_kib: int, lanes: int, length: int
) -> bytes:
    """Raw Argon2i/Argon2id output (version 1.3, as LUKS2 writes it)."""
    lib = _library("libargon2.so.1")
    out = ctypes.create_string_buffer(length)
    fn = lib.argon2_hash
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
        ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    status = fn(
        time_cost, memory_kib, lanes, secret, len(secret), salt, len(salt), out, length,
        None, 0, _ARGON2_TYPES[kind], _ARGON2_VERSION_13,
    )  # fmt: skip
    if status != 0:
        raise NativeError(f"argon2 failed (libargon2 error {status})")
    return out.raw


class XtsDecryptor:
    """AES-XTS decryption of whole sectors with one OpenSSL context per key.

    Only the IV changes from sector to sector, so the context is re-initialised with
    the new IV alone (the key schedule is kept): one C call pair per sector.
    """

    def __init__(self, key: bytes) -> None:
        lib = _library("libcrypto.so.3")
        self._lib = lib
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_get_cipherbyname.restype = ctypes.c_void_p
        lib.EVP_get_cipherbyname.argtypes = [ctypes.c_char_p]
        lib.EVP_DecryptInit_ex.argtypes = [ctypes.c_void_p] * 5
        # raw addresses only: under TCG each argument conversion per sector is felt
        lib.EVP_DecryptUpdate.argtypes = [ctypes.c_void_p] * 5
        name = {32: b"aes-128-xts", 64: b"aes-256-xts"}.get(len(key))
        if name is None:
            raise NativeError(f"AES-XTS key of {len(key)} bytes")
        cipher = lib.EVP_get_cipherbyname(name)
        self._ctx = lib.EVP_CIPHER_CTX_new()
        if not cipher or not self._ctx:
            raise NativeError(f"libcrypto has no {name.decode()}")
        if lib.EVP_DecryptInit_ex(self._ctx, cipher, None, key, None) != 1:
            raise NativeError("libcrypto refused the AES-XTS key (its two halves are equal?)")

    def decrypt(self, data: bytes, tweaks: bytes, sector_size: int) -> bytes:
        """``data``: whole sectors; ``tweaks``: their 16-byte IVs, concatenated."""
        count = len(data) // sector_size
        if len(tweaks) != 16 * count:
            raise NativeError(f"{len(tweaks)} bytes of IVs for {count} sectors")
        out = ctypes.create_string_buffer(len(data))
        source = ctypes.create_string_buffer(data, len(data))
        ivs = ctypes.create_string_buffer(tweaks, len(tweaks))
        written = ctypes.c_int(0)
        out_at, in_at, iv_at = (
            ctypes.addressof(out),
            ctypes.addressof(source),
            ctypes.addressof(ivs),
        )
        written_at = ctypes.addressof(written)
        init, update, ctx = self._lib.EVP_DecryptInit_ex, self._lib.EVP_DecryptUpdate, self._ctx
        for i in range(count):
            at = i * sector_size
            if init(ctx, None, None, None, iv_at + 16 * i) != 1:
                raise NativeError("AES-XTS IV rejected")
            if update(ctx, out_at + at, written_at, in_at + at, sector_size) != 1:
                raise NativeError("AES-XTS decryption failed")
        return out.raw

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx:
            self._lib.EVP_CIPHER_CTX_free(ctx)
