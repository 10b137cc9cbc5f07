"""What goes into the initramfs for one architecture, as a list of cpio entries.

The base is the upstream layout (``/init``, ``/dev/console``, ``/dev/null``,
``/etc/cosign.pub``) plus busybox, the recipe's kernel modules with a ``modules.dep``,
and the recipe's extra files and trees. ``init = "busybox-marker"`` uses the small
shell ``/init`` below; ``init = "guest-agent"`` asks ``publisher.media.guestpack`` (the
guest agent's packer) for its entries, which then replace ``/init`` and add the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guest.agent.registryconf import REGISTRY_CA
from guest.contract.arch import Arch
from publisher.media import cpio, kmods
from publisher.media.guestpack import PackInputs
from publisher.media.packcache import agent_entries
from publisher.media.recipe import Recipe, RecipeError

#: The stand-in PID 1: proves the UKI, initramfs, modules and cmdline, then powers off.
MARKER_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
loaded=0
for m in $(/bin/busybox cat /etc/cloudboot/modules 2>/dev/null); do
  /bin/busybox modprobe "$m" && loaded=$((loaded + 1))
done
echo "CLOUDBOOT-INIT-OK arch=$(/bin/busybox uname -m) modules=$loaded"
echo "CLOUDBOOT-CMDLINE $(/bin/busybox cat /proc/cmdline)"
/bin/busybox sync
/bin/busybox poweroff -f
"""


@dataclass(frozen=True)
class KernelInputs:
    """What the kernel source resolved to on disk."""

    vmlinuz: Path
    uname: str
    modules_dir: Path | None


def module_entries(
    kernel: KernelInputs, wanted: tuple[str, ...], on_demand: tuple[str, ...] = ()
) -> list[cpio.Entry]:
    """The modules (and ``modules.dep``); only ``wanted`` are listed to load at start-up,
    ``on_demand`` ones (xfs, btrfs) are packed for the guest to modprobe when a disk
    target needs them, so the plain boot does not pay for loading them. An on-demand
    module the kernel does not have is left out (a custom kernel without xfs cannot read
    xfs; the guest's mount error then says the driver is missing)."""
    if not wanted and not on_demand:
        return []
    if kernel.modules_dir is None or not kernel.modules_dir.is_dir():
        raise RecipeError(f"kernel modules wanted but no modules directory for {kernel.uname}")
    available = kmods.index_modules(kernel.modules_dir)
    builtin = kmods.builtin_modules(kernel.modules_dir)
    startup = kmods.resolve(wanted, available, builtin)
    optional = tuple(m for m in on_demand if kmods.module_key(m) in available)
    order = kmods.resolve((*wanted, *optional), available, builtin)
    base = f"/lib/modules/{kernel.uname}"
    entries = [
        cpio.file(
            f"{base}/{available[m].relative_to(kernel.modules_dir).as_posix()}",
            available[m].read_bytes(),
        )
        for m in order
    ]
    dep = kmods.modules_dep(order, available, kernel.modules_dir)
    entries.append(cpio.file(f"{base}/modules.dep", dep.encode()))
    for extra in ("modules.builtin", "modules.order"):
        if (kernel.modules_dir / extra).is_file():
            entries.append(cpio.file(f"{base}/{extra}", (kernel.modules_dir / extra).read_bytes()))
    listing = "".join(f"{m}\n" for m in startup)
    entries.append(cpio.file("/etc/cloudboot/modules", listing.encode()))
    return entries


def initramfs_entries(
    recipe: Recipe,
    arch: Arch,
    kernel: KernelInputs,
    busybox: Path,
    pack: PackInputs | None,
    *,
    reuse_pack: bool = True,
) -> list[cpio.Entry]:
    """Every entry of the initramfs for ``arch``; later entries win on the same path.

    ``pack``: the guest agent's inputs, resolved (and fingerprinted) by the caller when
    the recipe says ``init = "guest-agent"``.
    """
    entries = [
        cpio.directory("/dev"),
        cpio.char_device("/dev/console", 5, 1),
        cpio.char_device("/dev/null", 1, 3, 0o666),
        cpio.directory("/proc"),
        cpio.directory("/sys"),
        cpio.directory("/tmp", 0o1777),
        cpio.directory("/etc"),
        cpio.file("/bin/busybox", busybox.read_bytes(), 0o755),
        cpio.symlink("/bin/sh", "busybox"),
        cpio.file("/init", MARKER_INIT.encode(), 0o755),
    ]
    key = recipe.cosign_public_key
    if key is not None:  # checked before the build started (recipe.check_public_key)
        entries.append(cpio.file("/etc/cosign.pub", key.read_bytes()))
    if recipe.registry_ca is not None:
        entries.append(cpio.file(REGISTRY_CA, recipe.registry_ca.read_bytes()))
    entries += module_entries(kernel, recipe.initramfs.modules, recipe.initramfs.on_demand_modules)
    if recipe.initramfs.init == "guest-agent":
        if pack is None or pack.arch is not arch:
            raise ValueError(f"guest-agent init without the packer's inputs for {arch.value}")
        entries += agent_entries(pack, reuse=reuse_pack)  # packed once per inputs
    for spec in recipe.initramfs.trees:
        entries += cpio.tree(spec.src, spec.dest)
    for spec in recipe.initramfs.files:
        entries.append(cpio.file(spec.dest, spec.src.read_bytes(), spec.mode))
    return entries
