"""BootOrder: an array of u16 boot option numbers, and the rule for putting ours first."""

from __future__ import annotations

import struct

from guest.contract.errors import FormatError


def parse(data: bytes) -> list[int]:
    if len(data) % 2:
        raise FormatError(
            f"BootOrder has odd length {len(data)}", offset=len(data) - 1, what="BootOrder"
        )
    return [n for (n,) in struct.iter_unpack("<H", data)]


def serialise(order: list[int]) -> bytes:
    return b"".join(struct.pack("<H", n) for n in order)


def put_first(order: list[int], number: int) -> list[int] | None:
    """``number`` first, then the others minus any ``number``; None when nothing changes.

    Returning None lets the caller skip the NVRAM write, which on real flash is a
    wear and on some firmware a slow reclaim.
    """
    if order and order[0] == number and number not in order[1:]:
        return None
    return [number, *(n for n in order if n != number)]


def without(order: list[int], number: int) -> list[int] | None:
    """``order`` minus ``number`` (the NVRAM reset); None when it is not there."""
    if number not in order:
        return None
    return [n for n in order if n != number]
