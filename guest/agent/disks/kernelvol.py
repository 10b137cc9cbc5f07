"""xfs and btrfs on a volume (LVM, md RAID1, LUKS): the volume found and opened in userland
(``guest.agent.volumes``), then handed to the kernel as one read-only device-mapper device
for its filesystem driver to mount (docs/disks.md, "Volumes under xfs and btrfs").

Two steps, so the deadline covers only what can hang in the kernel: ``plan`` runs first
(the metadata parsed with its caps, a LUKS key slot's KDF with its own bounds), then
``mapped`` creates the device inside the mount's deadline and removes it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from guest.agent import volumes
from guest.agent.blockdev import BlockDevice
from guest.agent.disks.bootfiles import DiskReadError
from guest.agent.volumes import devmapper
from guest.agent.volumes.cryptstream import SUPPORTED_CIPHERS
from guest.agent.volumes.devmapper import Target
from guest.agent.volumes.luks import LuksError

if TYPE_CHECKING:
    from guest.agent.disks.discover import DiskContext
    from guest.agent.disks.mounted import Progress

#: The mapped device's name (one disk target is read at a time).
DM_NAME = "cloudboot-disk"
LINEAR_MODULES = ("dm_mod",)
CRYPT_MODULES = devmapper.CRYPT_MODULES


@dataclass(frozen=True)
class Mapping:
    """What to map: a table (a crypt target's params hold the key, wiped by ``wipe``)."""

    spec: str
    what: str
    targets: tuple[Target, ...] = field(repr=False)
    modules: tuple[str, ...]

    @property
    def secret(self) -> bool:
        return any(t.kind == "crypt" for t in self.targets)

    def wipe(self) -> None:
        for target in self.targets:
            if isinstance(target.params, bytearray):
                target.params[:] = bytes(len(target.params))


class Mapper(Protocol):
    """The machine edge (``KernelMapper`` in the guest): load modules, create, remove."""

    def create(self, mapping: Mapping) -> Path: ...

    def remove(self, mapping: Mapping) -> None: ...


def plan(ctx: DiskContext) -> Mapping | None:
    """The device-mapper table the plan's ``device`` needs, or None for a plain device."""
    spec = ctx.source.device
    found = volumes.locate(spec, list(ctx.devices), ctx.console)
    if not isinstance(found, BlockDevice):
        pieces = [(p.start, p.length, devmapper.devno(p.node), p.offset) for p in found.pieces]
        targets = tuple(devmapper.linear_targets(pieces))
        return Mapping(spec, f"{found.what}, {len(targets)} segment(s)", targets, LINEAR_MODULES)
    where = str(found.node)
    try:
        raw = open(found.node, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DiskReadError(f"cannot open: {exc.strerror}", where=where) from exc
    with raw:
        if raw.read(6) != b"LUKS\xba\xbe":
            return None
        secret = volumes.require_passphrase(ctx.source.luks_passphrase, where)
        available = volumes.available_memory(ctx.paths.root / "proc/meminfo")
        header, key, size = volumes.unlock_key(raw, where, secret, available, ctx.console)
    if header.cipher not in SUPPORTED_CIPHERS:  # it goes into the table: nothing else
        raise LuksError(f"LUKS cipher {header.cipher!r} is not supported", where=where)
    target = devmapper.crypt_target(
        key, size, devmapper.devno(found.node), header.data_offset, header.iv_offset,
        header.sector_size, header.cipher,
    )  # fmt: skip
    return Mapping(spec, f"LUKS{header.version} on {where}", (target,), CRYPT_MODULES)


@contextlib.contextmanager
def mapped(mapping: Mapping, mapper: Mapper, progress: Progress) -> Iterator[Path]:
    """The mapped device's node for the block; removed after (the key wiped either way)."""
    progress.at(f"device-mapper {mapping.what}")
    try:
        node = mapper.create(mapping)
    except devmapper.DeviceMapperError as exc:  # named by the plan's device
        raise devmapper.DeviceMapperError(
            f"{mapping.what}: {exc.message}", where=mapping.spec
        ) from exc
    finally:
        mapping.wipe()
    try:
        yield node
    finally:
        progress.at(f"device-mapper remove {DM_NAME}")
        mapper.remove(mapping)


class KernelMapper:
    """The guest's mapper: modprobe the targets, then the DM ioctls; ``/dev/dm-N``."""

    def __init__(self, dev: Path = Path("/dev")) -> None:
        self.dev = dev
        self._dm = devmapper.DeviceMapper(dev / "mapper/control")

    def create(self, mapping: Mapping) -> Path:
        devmapper.load_modules(mapping.modules)
        _major, minor = self._dm.create(DM_NAME, mapping.targets, mapping.secret)
        return self.dev / f"dm-{minor}"

    def remove(self, mapping: Mapping) -> None:
        self._dm.remove(DM_NAME)
