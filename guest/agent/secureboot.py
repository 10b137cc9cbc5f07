"""What a staged kernel needs under Secure Boot: an Authenticode signature (docs/trust-model.md).

Under Secure Boot the firmware itself verifies every image it starts against db, so a
staged kernel boots only if a db key signed it (the publisher's ``secureboot_key`` for
kernels it builds, a distribution's key enrolled in db, or shim). The firmware is the
verifier; the agent does not repeat db's cryptography. What the agent does is refuse,
before anything is written, a kernel that carries no signature at all: otherwise it
would write Boot0001 for an image the firmware is certain to refuse, and every boot
would fall back to the media and stage it again. ``SecureBoot`` is read from efivarfs.
"""

from __future__ import annotations

import os
import struct

from guest.agent.stage import DeviceRuns, FileData, StageError
from guest.contract.efi import GLOBAL_VARIABLE_GUID
from guest.contract.efi.efivarfs import EfiVarStore

_HEAD = 4096
_CERT_TABLE = {0x10B: 128, 0x20B: 144}  # optional-header offset of data directory 4


def secure_boot_on(store: EfiVarStore) -> bool:
    var = store.read("SecureBoot", GLOBAL_VARIABLE_GUID)
    return var is not None and var.data[:1] == b"\x01"


def _head(data: FileData) -> bytes:
    if not isinstance(data, DeviceRuns):
        return data[:_HEAD]
    out = bytearray()
    with open(data.device, "rb", buffering=0) as src:
        for offset, length in data.runs:
            want = min(length, _HEAD - len(out))
            out += bytes(want) if offset is None else os.pread(src.fileno(), want, offset)
            if len(out) >= _HEAD:
                break
    return bytes(out)


def authenticode_signed(data: FileData) -> bool:
    """Whether ``data`` is a PE image whose certificate table is present and in the file."""
    head, size = _head(data), (data.size if isinstance(data, DeviceRuns) else len(data))
    if len(head) < 0x40 or head[:2] != b"MZ":
        return False
    pe = struct.unpack_from("<I", head, 0x3C)[0]
    if pe + 24 + 2 > len(head) or head[pe : pe + 4] != b"PE\0\0":
        return False
    optional = pe + 24
    where = _CERT_TABLE.get(struct.unpack_from("<H", head, optional)[0])
    if where is None or optional + where + 8 > len(head):
        return False
    offset, length = struct.unpack_from("<II", head, optional + where)
    return bool(length >= 8 and offset + length <= size)


def require_signed_under_secure_boot(store: EfiVarStore, kernel: FileData, target: str) -> None:
    if secure_boot_on(store) and not authenticode_signed(kernel):
        raise StageError(
            "Secure Boot is on and this kernel carries no Authenticode signature: the firmware "
            "would refuse it (sign it with a db key: sbsign, or the recipe's secureboot_key)",
            where=f"target {target!r}",
        )
