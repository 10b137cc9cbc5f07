"""On-demand kernel modules (the recipe's ``initramfs.on_demand_modules``): packed with
their dependencies and in ``modules.dep``, but not in the start-up listing, so the plain
boot does not load xfs or btrfs (docs/disks.md). Real Debian cloud kernel modules."""

from __future__ import annotations

from guest.contract.arch import Arch
from publisher.media.debs import DebCache
from publisher.media.initramfs import KernelInputs, module_entries
from publisher.media.recipe import DEFAULT_MODULES
from tests.qemu_boot import repo_recipe


def test_on_demand_modules_are_packed_but_not_listed() -> None:
    kpkg = DebCache().kernel_package("linux-image-cloud-amd64", Arch.X86_64)
    modules_dir = next((kpkg.root / "lib/modules").iterdir())
    kernel = KernelInputs(next((kpkg.root / "boot").glob("vmlinuz-*")), modules_dir.name,
                          modules_dir)  # fmt: skip
    recipe = repo_recipe()
    assert recipe.initramfs.on_demand_modules[:2] == ("xfs", "btrfs")
    assert {"dm_mod", "dm_crypt", "xts", "ecb"} <= set(recipe.initramfs.on_demand_modules)
    entries = {e.path: e for e in module_entries(kernel, DEFAULT_MODULES, ("xfs", "btrfs"))}
    listing = entries["/etc/cloudboot/modules"].data.decode().split()
    base = f"/lib/modules/{modules_dir.name}"
    dep = entries[f"{base}/modules.dep"].data.decode()
    packed = {p.rsplit("/", 1)[-1] for p in entries if p.endswith(".ko")}
    assert {"xfs.ko", "btrfs.ko"} <= packed
    assert "xfs" not in listing and "btrfs" not in listing and "virtio_blk" in listing
    btrfs_line = next(line for line in dep.splitlines() if "/btrfs.ko:" in line)
    for needed in btrfs_line.split(":", 1)[1].split():  # its dependencies are packed too
        assert f"{base}/{needed}" in entries
    plain = {e.path for e in module_entries(kernel, DEFAULT_MODULES)}
    assert not any(p.endswith(("/xfs.ko", "/btrfs.ko")) for p in plain)
    # a kernel without the module (a custom build): left out, not an error
    assert {e.path for e in module_entries(kernel, DEFAULT_MODULES, ("no_such_fs",))} == plain
