"""A LUKS data segment read as plain bytes: a seekable stream that decrypts per sector.

The filesystem readers take any seekable binary stream, so an unlocked LUKS volume is
handed to them as this stream instead of a /dev/mapper node: nothing of the kernel's
device-mapper is involved. Only ``aes-xts-plain64`` is read (the cryptsetup default
since 1.6; LUKS1 ``cbc-essiv`` disks are refused with a clear error).
"""

from __future__ import annotations

from typing import BinaryIO

from guest.agent.volumes.linear import VolumeStream
from guest.contract.errors import CloudbootError

SUPPORTED_CIPHERS = ("aes-xts-plain64",)


class SectorCipher:
    """AES-XTS with the plain64 IV: the tweak is the little-endian sector number."""

    def __init__(self, key: bytes, sector_size: int, iv_step: int = 1, iv_base: int = 0) -> None:
        from guest.agent.volumes.native import XtsDecryptor

        self.sector_size = sector_size
        #: How far the IV moves per sector. LUKS1 and LUKS2 both count IVs in 512-byte
        #: units (cryptsetup does not set dm-crypt's iv_large_sectors), so
        #: ``sector_size // 512``; tests/test_guest_luks.py decrypts cryptsetup's
        #: 4096-byte-sector images to prove it.
        self.iv_step = iv_step
        self.iv_base = iv_base
        self._xts = XtsDecryptor(key)

    @classmethod
    def make(
        cls,
        cipher: str,
        key: bytes,
        sector_size: int,
        where: str,
        iv_step: int = 1,
        iv_base: int = 0,
    ) -> SectorCipher:
        if cipher not in SUPPORTED_CIPHERS:
            raise CloudbootError(
                f"LUKS cipher {cipher!r} is not supported (only {', '.join(SUPPORTED_CIPHERS)})",
                where=where,
            )
        if len(key) not in (32, 64):
            raise CloudbootError(f"AES-XTS key of {len(key)} bytes", where=where)
        return cls(key, sector_size, iv_step, iv_base)

    def decrypt(self, data: bytes, first_sector: int) -> bytes:
        """Decrypt whole sectors; ``first_sector`` counts ``sector_size`` units."""
        count = len(data) // self.sector_size
        first = self.iv_base + first_sector * self.iv_step
        step = self.iv_step
        tweaks = b"".join((first + i * step).to_bytes(16, "little") for i in range(count))
        return self._xts.decrypt(data, tweaks, self.sector_size)


class DecryptedStream(VolumeStream):
    """``size`` bytes from ``offset`` on ``device``, decrypted; read-only, seekable."""

    def __init__(self, device: BinaryIO, offset: int, size: int, cipher: SectorCipher) -> None:
        super().__init__(size - size % cipher.sector_size)
        self._device = device
        self._offset = offset
        self._cipher = cipher

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = self.pread(self._pos, want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def pread(self, position: int, length: int) -> bytes:
        """``length`` plain bytes at ``position`` (fewer at the end of the segment)."""
        length = max(0, min(length, self._size - position))
        step = self._cipher.sector_size
        first = position // step
        last = -(-(position + length) // step)
        self._device.seek(self._offset + first * step)
        raw = self._device.read((last - first) * step)
        if len(raw) != (last - first) * step:
            raise CloudbootError(
                "encrypted device ended early", where=f"@{self._offset + first * step}"
            )
        plain = self._cipher.decrypt(raw, first)
        skip = position - first * step
        return plain[skip : skip + length]

    def close(self) -> None:
        self._device.close()
        super().close()
