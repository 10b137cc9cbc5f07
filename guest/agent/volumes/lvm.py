"""LVM2 logical volumes found and read in userland (docs/disks.md).

A physical volume carries a label (``LABELONE``, in one of its first four sectors), a
header naming its UUID and its metadata area, and in that area the volume group's
metadata as text. A linear logical volume is its segments laid end to end, each a run of
extents on one PV, so it is read as ``linear.Piece``s without device-mapper. Striped
(more than one stripe), thin, cache, RAID and snapshot segments are refused by name.

The disk is untrusted: the metadata text is capped (``MAX_METADATA``), the parser's
nesting and item counts are capped, and the numbers it yields are checked against the
devices before they become offsets.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.agent.volumes.linear import Piece
from guest.contract.errors import CloudbootError

LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
MAX_METADATA = 1 << 20
MAX_DEPTH = 16
MAX_ITEMS = 100_000
MAX_SEGMENTS = 1024
_SECTOR = 512
_TOKEN = re.compile(
    rb'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[-+]?\d+(?:\.\d+)?|[A-Za-z0-9_.+\-]+|[{}\[\]=,]'
)


class LvmError(CloudbootError):
    pass


@dataclass(frozen=True)
class PhysicalVolume:
    """An LVM PV as its label and metadata area describe it."""

    node: Path
    uuid: str  # 32 characters, no dashes
    size: int
    metadata: str  # the VG's text metadata ("" when this PV carries none)


@dataclass(frozen=True)
class LogicalVolume:
    """An LV of a volume group, as segments mapped onto PVs."""

    vg: str
    name: str
    pieces: tuple[Piece, ...]

    @property
    def names(self) -> tuple[str, ...]:
        mapper = f"{self.vg.replace('-', '--')}-{self.name.replace('-', '--')}"
        return (f"/dev/{self.vg}/{self.name}", f"/dev/mapper/{mapper}")


def read_pv(node: Path) -> PhysicalVolume | None:
    """The PV on ``node`` and the newest metadata text in its first metadata area."""
    try:
        with open(node, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(4 * _SECTOR)
            for sector in range(4):
                label = head[sector * _SECTOR : (sector + 1) * _SECTOR]
                if label[:8] == LABEL_ID and label[24:32] == LABEL_TYPE:
                    return _pv(f, node, size, label)
    except OSError:
        return None
    return None


def _pv(f: Any, node: Path, size: int, label: bytes) -> PhysicalVolume:
    (offset,) = struct.unpack_from("<I", label, 20)
    if not 32 <= offset <= _SECTOR - 48:
        raise LvmError(f"LVM label: PV header at {offset}", where=str(node))
    uuid = label[offset : offset + 32].decode("ascii", "replace")
    at = offset + 40
    areas: list[list[tuple[int, int]]] = [[], []]  # data areas, then metadata areas
    for kind in (0, 1):
        while at + 16 <= len(label):
            start, length = struct.unpack_from("<QQ", label, at)
            at += 16
            if start == 0:
                break
            areas[kind].append((start, length))
    text = ""
    if areas[1]:
        mda_start, mda_size = areas[1][0]
        text = _metadata(f, node, size, mda_start, mda_size)
    return PhysicalVolume(node, uuid, size, text)


def _metadata(f: Any, node: Path, size: int, start: int, length: int) -> str:
    where = f"{node}@{start}"
    if start + length > size or length < MDA_HEADER_SIZE:
        raise LvmError(f"LVM metadata area {start}+{length} is outside the device", where=where)
    f.seek(start)
    header = f.read(MDA_HEADER_SIZE)
    if header[4:20] != MDA_MAGIC:
        raise LvmError("LVM metadata area: bad magic", where=where)
    offset, text_size, _checksum, flags = struct.unpack_from("<QQII", header, 40)
    if text_size == 0 or flags & 1:  # none, or ignored
        return ""
    if text_size > MAX_METADATA or not MDA_HEADER_SIZE <= offset < length:
        raise LvmError(f"LVM metadata of {text_size} bytes at {offset}", where=where)
    first = min(text_size, length - offset)
    f.seek(start + offset)
    text = f.read(first)
    if first < text_size:  # the circular buffer wraps to just after the header
        f.seek(start + MDA_HEADER_SIZE)
        text += f.read(text_size - first)
    return bytes(text).rstrip(b"\0").decode("utf-8", "replace")


def parse_text(text: str, where: str) -> dict[str, Any]:
    """LVM's text format: ``name { ... }`` sections, ``key = value``, arrays, strings."""
    tokens = [
        t for t in _TOKEN.findall(text.encode()) if not t.isspace() and not t.startswith(b"#")
    ]
    pos = 0
    items = 0

    def value() -> Any:
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == b"[":
            out = []
            while tokens[pos] != b"]":
                if tokens[pos] == b",":
                    pos += 1
                    continue
                out.append(value())
            pos += 1
            return out
        if token.startswith(b'"'):
            return re.sub(rb"\\(.)", rb"\1", token[1:-1]).decode("utf-8", "replace")
        try:
            return int(token)
        except ValueError:
            return token.decode("utf-8", "replace")

    def section(depth: int) -> dict[str, Any]:
        nonlocal pos, items
        if depth > MAX_DEPTH:
            raise LvmError(f"LVM metadata nested deeper than {MAX_DEPTH}", where=where)
        out: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != b"}":
            items += 1
            if items > MAX_ITEMS:
                raise LvmError(f"LVM metadata of more than {MAX_ITEMS} items", where=where)
            name = tokens[pos].decode("utf-8", "replace")
            pos += 1
            if tokens[pos] == b"{":
                pos += 1
                out[name] = section(depth + 1)
                pos += 1  # the "}"
            elif tokens[pos] == b"=":
                pos += 1
                out[name] = value()
            else:
                raise LvmError(
                    f"LVM metadata: unexpected {tokens[pos]!r} after {name!r}", where=where
                )
        return out

    try:
        return section(0)
    except IndexError as exc:
        raise LvmError("LVM metadata ends early", where=where) from exc


def logical_volumes(pvs: Iterable[PhysicalVolume]) -> list[LogicalVolume]:
    """Every linear LV of every VG whose PVs are all present; the newest metadata wins."""
    pvs = list(pvs)
    by_uuid = {pv.uuid: pv for pv in pvs}
    groups: dict[str, tuple[int, str, dict[str, Any], PhysicalVolume]] = {}
    for pv in pvs:
        if not pv.metadata:
            continue
        doc = parse_text(pv.metadata, str(pv.node))
        for vg_name, vg in doc.items():
            if isinstance(vg, dict) and "physical_volumes" in vg:
                seqno = int(vg.get("seqno", 0))
                vg_id = str(vg.get("id", vg_name))
                if vg_id not in groups or groups[vg_id][0] < seqno:
                    groups[vg_id] = (seqno, vg_name, vg, pv)
    out = []
    for _seqno, vg_name, vg, pv in groups.values():
        out += _lvs(vg_name, vg, by_uuid, str(pv.node))
    return out


def _lvs(
    vg_name: str, vg: dict[str, Any], by_uuid: dict[str, PhysicalVolume], where: str
) -> list[LogicalVolume]:
    extent = int(vg["extent_size"]) * _SECTOR
    pv_nodes: dict[str, tuple[PhysicalVolume, int]] = {}
    for name, pv in vg["physical_volumes"].items():
        found = by_uuid.get(str(pv["id"]).replace("-", ""))
        if found is not None:
            pv_nodes[name] = (found, int(pv["pe_start"]) * _SECTOR)
    out = []
    for lv_name, lv in vg.get("logical_volumes", {}).items():
        if "VISIBLE" not in lv.get("status", []):
            continue
        pieces: list[Piece] = []
        segments = [v for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]
        if len(segments) > MAX_SEGMENTS:
            raise LvmError(f"LV {vg_name}/{lv_name}: {len(segments)} segments", where=where)
        for seg in sorted(segments, key=lambda s: int(s["start_extent"])):
            kind = seg.get("type")
            if kind != "striped" or int(seg.get("stripe_count", 0)) != 1:
                pieces = []
                break  # not linear: listed with no pieces, refused when named
            pv_name, first_pe = seg["stripes"][0], int(seg["stripes"][1])
            if pv_name not in pv_nodes:
                pieces = []
                break
            pv, pe_start = pv_nodes[pv_name]
            offset = pe_start + first_pe * extent
            length = int(seg["extent_count"]) * extent
            if offset + length > pv.size:
                raise LvmError(
                    f"LV {vg_name}/{lv_name} lies past the end of {pv.node}", where=where
                )
            pieces.append(Piece(int(seg["start_extent"]) * extent, length, pv.node, offset))
        out.append(LogicalVolume(vg_name, lv_name, tuple(pieces)))
    return out
