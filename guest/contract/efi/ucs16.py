"""UCS-2 strings as UEFI stores them: little-endian 16-bit units, NUL-terminated."""

from __future__ import annotations

from guest.contract.errors import FormatError


def encode(text: str) -> bytes:
    """Encode with the terminating NUL; characters outside the BMP cannot be stored."""
    if any(ord(c) > 0xFFFF for c in text):
        raise ValueError(f"{text!r} has characters outside UCS-2")
    return (text + "\0").encode("utf-16-le")


def decode_at(data: bytes, offset: int, what: str = "UCS-2 string") -> tuple[str, int]:
    """Decode a NUL-terminated string at ``offset``; returns it and the offset past the NUL."""
    pos = offset
    while pos + 1 < len(data):
        if data[pos] == 0 and data[pos + 1] == 0:
            return data[offset:pos].decode("utf-16-le", errors="replace"), pos + 2
        pos += 2
    raise FormatError("string has no NUL terminator", offset=offset, what=what)
