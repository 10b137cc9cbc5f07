"""md arrays and LVM logical volumes assembled from the block devices, and found by the
names a plan gives them: ``/dev/md/NAME``, ``/dev/VG/LV``, ``/dev/mapper/VG-LV``, or
``LABEL=``/``UUID=`` of the filesystem inside (docs/disks.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from guest.agent import blockdev
from guest.agent.volumes import lvm, md
from guest.agent.volumes.linear import Piece
from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    from guest.agent.blockdev import BlockDevice

MD_PREFIX = "/dev/md/"


class Log(Protocol):
    def log(self, message: str) -> None: ...


@dataclass(frozen=True)
class Volume:
    """A volume made of device pieces: the names it answers to, and what it is."""

    names: tuple[str, ...]
    pieces: tuple[Piece, ...]
    what: str
    refused: str = ""  # why it cannot be read (not linear, a PV missing)


def names_a_volume(spec: str) -> bool:
    """``/dev/md/...``, ``/dev/mapper/...`` or ``/dev/VG/LV`` (two components)."""
    parts = spec.removeprefix("/dev/").split("/")
    return spec.startswith("/dev/") and (parts[0] in ("md", "mapper") or len(parts) == 2)


def volumes(devices: Iterable[BlockDevice], console: Log) -> list[Volume]:
    devices = list(devices)
    members = [m for d in devices if (m := md.read_member(d.node)) is not None]
    for note in md.level_note(members):
        console.log(note)
    found = [
        Volume(
            tuple(MD_PREFIX + n for n in (a.name, a.short_name, a.array_uuid)),
            a.pieces(),
            f"md raid1 from {a.source.node}",
        )
        for a in md.assemble(members)
    ]
    pvs = [pv for d in devices if (pv := lvm.read_pv(d.node)) is not None]
    try:
        lvs = lvm.logical_volumes(pvs)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        where = ", ".join(str(pv.node) for pv in pvs)
        raise lvm.LvmError(
            f"malformed LVM metadata ({type(exc).__name__}: {exc})", where=where
        ) from exc
    for lv in lvs:
        nodes = sorted({str(p.node) for p in lv.pieces})
        refused = (
            ""
            if lv.pieces
            else "not a linear LV on present PVs (striped, thin, RAID, or a PV missing)"
        )
        found.append(
            Volume(lv.names, lv.pieces, f"LVM {lv.vg}/{lv.name} on {', '.join(nodes)}", refused)
        )
    return found


def named(spec: str, devices: Iterable[BlockDevice], console: Log) -> Volume:
    found = volumes(devices, console)
    hits = [v for v in found if spec in v.names]
    if len(hits) != 1:
        seen = ", ".join(v.names[0] for v in found) or "none"
        what = "several volumes are" if hits else "no md raid1 array or LVM volume is"
        raise CloudbootError(f"{what} named so (volumes seen: {seen})", where=spec)
    return _readable(hits[0], spec)


def by_identity(spec: str, devices: Iterable[BlockDevice], console: Log) -> Volume:
    """The one volume whose filesystem has the label/UUID ``spec`` names."""
    devices = list(devices)
    key, _sep, value = spec.partition("=")
    hits = []
    for volume in volumes(devices, console):
        if not volume.pieces:
            continue
        first = volume.pieces[0]
        with open(first.node, "rb") as f:
            f.seek(first.offset)
            ident = blockdev.identify(f.read(min(4096, first.length)))
        have = "" if ident is None else ident.label if key.upper() == "LABEL" else ident.uuid
        if ident is not None and (
            have == value if key.upper() == "LABEL" else have.lower() == value.lower()
        ):
            hits.append(volume)
    if len(hits) != 1:
        seen = ", ".join(d.name for d in devices) or "none"
        raise blockdev.DeviceNotFoundError(
            f"no block device or volume matches {spec!r} (devices seen: {seen})"
            if not hits
            else f"{spec!r} matches " + " and ".join(v.names[0] for v in hits)
        )
    return _readable(hits[0], spec)


def _readable(volume: Volume, spec: str) -> Volume:
    if volume.refused:
        raise CloudbootError(f"{volume.what}: {volume.refused}", where=spec)
    return volume
