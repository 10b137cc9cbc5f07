"""An edk2 (OVMF/AAVMF) variable-store file, read and edited on the host.

Layout: a firmware volume header (``_FVH``; its HeaderLength says where the store starts),
a VARIABLE_STORE_HEADER (authenticated-variable GUID, size, format 0x5A, state 0xFE), then
variables, each 4-byte aligned: StartId 0x55AA, State, attributes, (auth: monotonic count,
timestamp, public-key index), name size, data size, vendor GUID, UCS-2 name, data. Deleted
variables stay in the log with a cleared State bit until the firmware reclaims space.

Editing rewrites only the variable region: live variables in their original order, the
rest erased to 0xFF, every byte outside the region (FV header, FTW blocks) untouched. That
is what "reset to the menu" on the host needs (delete Boot0001, drop 0001 from BootOrder)
without replacing the user's other settings. ``VarsFile`` is the host's
``varstore.VariableStore``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, replace

from guest.contract.efi import ucs16
from guest.contract.efi.varstore import Variable
from guest.contract.errors import FormatError

NV_DATA_FV_GUID = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
AUTH_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
PLAIN_VARIABLE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")

_FV = struct.Struct("<16s16sQ4sIHHHBB")
_STORE = struct.Struct("<16sIBBHI")
_AUTH_VAR = struct.Struct("<HBBIQ16sIII16s")
_PLAIN_VAR = struct.Struct("<HBBIII16s")
START_ID = 0x55AA
VAR_ADDED = 0x3F
VAR_IN_DELETED_TRANSITION_ADDED = 0x3E
WHAT = "edk2 vars"


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class StoredVariable:
    """A variable as edk2's authenticated variable store keeps it."""

    name: str
    guid: uuid.UUID
    attributes: int
    data: bytes
    state: int = VAR_ADDED
    monotonic_count: int = 0
    timestamp: bytes = bytes(16)
    pubkey_index: int = 0

    @property
    def live(self) -> bool:
        return self.state in (VAR_ADDED, VAR_IN_DELETED_TRANSITION_ADDED)


@dataclass
class VarsFile:
    """A whole vars file: the bytes around the variable region, and its variables."""

    image: bytes
    region_start: int  # first variable
    region_end: int  # end of the variable store
    authenticated: bool
    variables: list[StoredVariable]

    @classmethod
    def from_bytes(cls, image: bytes) -> VarsFile:
        if len(image) < _FV.size:
            raise FormatError("file too small for a firmware volume header", offset=0, what=WHAT)
        _zero, fs_guid, fv_len, sig, _attrs, hdr_len, *_rest = _FV.unpack_from(image, 0)
        if sig != b"_FVH" or uuid.UUID(bytes_le=fs_guid) != NV_DATA_FV_GUID:
            raise FormatError(
                "not an edk2 variable store (no _FVH / NV-data GUID)", offset=40, what=WHAT
            )
        store_guid, size, fmt, _state, *_r = _STORE.unpack_from(image, hdr_len)
        kind = uuid.UUID(bytes_le=store_guid)
        if kind not in (AUTH_VARIABLE_GUID, PLAIN_VARIABLE_GUID) or fmt != 0x5A:
            raise FormatError(
                f"unknown variable store {kind} format {fmt:#x}", offset=hdr_len, what=WHAT
            )
        end = hdr_len + size
        if end > len(image) or end > fv_len:
            raise FormatError(
                f"variable store size {size} runs past the file", offset=hdr_len + 16, what=WHAT
            )
        auth = kind == AUTH_VARIABLE_GUID
        start = _align4(hdr_len + _STORE.size)
        return cls(image, start, end, auth, list(_read_variables(image, start, end, auth)))

    def live(self) -> list[StoredVariable]:
        """Variables the firmware sees: ADDED ones, plus in-transition ones with no twin."""
        added = {(v.name, v.guid) for v in self.variables if v.state == VAR_ADDED}
        return [
            v
            for v in self.variables
            if v.state == VAR_ADDED
            or (v.state == VAR_IN_DELETED_TRANSITION_ADDED and (v.name, v.guid) not in added)
        ]

    def read(self, name: str, guid: uuid.UUID) -> Variable | None:
        for var in self.live():
            if var.name == name and var.guid == guid:
                return Variable(var.attributes, var.data)
        return None

    def delete(self, name: str, guid: uuid.UUID) -> bool:
        """Drop a live variable; False when there is none (a dead entry of the same name in
        the log is not a variable: deleting "it" would change nothing)."""
        live = self.live()
        kept = [v for v in live if not (v.name == name and v.guid == guid)]
        if len(kept) == len(live):
            return False
        self.variables = kept
        return True

    def write(self, name: str, guid: uuid.UUID, attributes: int, data: bytes) -> None:
        """Replace in place (keeping its position) or append."""
        current = self.live()
        for i, var in enumerate(current):
            if var.name == name and var.guid == guid:
                current[i] = replace(var, attributes=attributes, data=data, state=VAR_ADDED)
                self.variables = current
                return
        self.variables = [*current, StoredVariable(name, guid, attributes, data)]

    def __bytes__(self) -> bytes:
        region = b"".join(_encode(v, self.authenticated) for v in self.live())
        room = self.region_end - self.region_start
        if len(region) > room:
            raise FormatError(
                f"variables need {len(region)} bytes, the store has {room}",
                offset=self.region_start,
                what=WHAT,
            )
        region += b"\xff" * (room - len(region))
        return self.image[: self.region_start] + region + self.image[self.region_end :]


def _read_variables(image: bytes, pos: int, end: int, auth: bool) -> list[StoredVariable]:
    head = _AUTH_VAR if auth else _PLAIN_VAR
    out: list[StoredVariable] = []
    while pos + head.size <= end:
        fields = head.unpack_from(image, pos)
        if fields[0] != START_ID:
            break
        if auth:
            _sid, state, _res, attrs, count, stamp, keyidx, nsize, dsize, guid = fields
        else:
            _sid, state, _res, attrs, nsize, dsize, guid = fields
            count, stamp, keyidx = 0, bytes(16), 0
        name_at = pos + head.size
        if name_at + nsize + dsize > end:
            raise FormatError(
                f"variable sizes {nsize}+{dsize} run past the store", offset=pos, what=WHAT
            )
        name, _ = ucs16.decode_at(image[name_at : name_at + nsize], 0, what=f"{WHAT} name")
        data = image[name_at + nsize : name_at + nsize + dsize]
        out.append(
            StoredVariable(name, uuid.UUID(bytes_le=guid), attrs, data, state, count, stamp, keyidx)
        )
        pos = _align4(name_at + nsize + dsize)
    return out


def _encode(var: StoredVariable, auth: bool) -> bytes:
    name = ucs16.encode(var.name)
    if auth:
        head = _AUTH_VAR.pack(
            START_ID,
            VAR_ADDED,
            0,
            var.attributes,
            var.monotonic_count,
            var.timestamp,
            var.pubkey_index,
            len(name),
            len(var.data),
            var.guid.bytes_le,
        )
    else:
        head = _PLAIN_VAR.pack(
            START_ID, VAR_ADDED, 0, var.attributes, len(name), len(var.data), var.guid.bytes_le
        )
    body = head + name + var.data
    return body + b"\xff" * (_align4(len(body)) - len(body))
