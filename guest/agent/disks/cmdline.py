"""Upstream's disk mode: ``cloudboot.disk=<device>`` on the kernel command line boots the
kernel already on that disk, with no network and no plan (docs/wire-formats.md §5.1, §9).

``cloudboot.disk.fs`` (default ext4), ``.kernel``, ``.initrd`` pin what the plan's disk
block would; ``.device`` is the ZFS dataset (upstream's name for it); ``.luks-passphrase``
is handed to the volume layer and never printed. The staged target is named ``disk``;
its command line is ``cloudboot.cmdline``.
"""

from __future__ import annotations

from collections.abc import Mapping

from guest.agent.cmdline import CmdlineError
from guest.agent.console import Console
from guest.contract.errors import Location
from guest.contract.plan import DiskSource, Target
from guest.contract.plan.model import DEVICE_PREFIXES, DISK_FILESYSTEMS

TARGET_NAME = "disk"
_WHERE = "/proc/cmdline"


def disk_source(raw: Mapping[str, str]) -> DiskSource:
    """The disk source the ``cloudboot.disk*`` keys describe; bad values name their key."""
    device = raw.get("cloudboot.disk", "")
    fs = raw.get("cloudboot.disk.fs") or "ext4"
    if fs not in DISK_FILESYSTEMS:
        raise CmdlineError(
            f"cloudboot.disk.fs={fs!r}: expected one of {', '.join(DISK_FILESYSTEMS)}",
            where=_WHERE,
        )
    if fs != "zfs" and not device.startswith(DEVICE_PREFIXES):
        raise CmdlineError(
            f"cloudboot.disk={device!r}: expected /dev/..., LABEL=, UUID=, PARTLABEL= or PARTUUID=",
            where=_WHERE,
        )
    return DiskSource(
        device=device,
        fs=fs,
        kernel=raw.get("cloudboot.disk.kernel") or None,
        initrd=raw.get("cloudboot.disk.initrd") or None,
        dataset=raw.get("cloudboot.disk.device") or None,
        luks_passphrase=raw.get("cloudboot.disk.luks-passphrase") or None,
    )


def disk_target(raw: Mapping[str, str], console: Console) -> Target:
    source = disk_source(raw)
    console.log(f"disk mode: cloudboot.disk={source.device} fs={source.fs} (no network, no plan)")
    return Target(TARGET_NAME, TARGET_NAME, "", "", "", source, Location(_WHERE))
