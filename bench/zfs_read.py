"""The agent's read step for a Proxmox ZFS dataset under QEMU TCG (x86_64, OVMF), as a
ratio to the ext4 read step, on the same lab: its boot.iso carries the ZFS tree
(publisher/media/zfsbuild.py), the pool is tests/zfs_images.py's. The ZFS read step
includes loading the nine zfs modules, the read-only import, the mount and the export
(docs/disks.md "ZFS"). Also: the ext4 boot's ``init`` step on that ZFS-carrying image.

Usage: .venv/bin/python bench/zfs_read.py [--quick] [--json PATH]
(each layout boots 2 times and each number is the median; ``--quick``: once)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.guest_boot import agent_boot
from bench.results import Row, add_report_options, emit
from publisher.media import zfsbuild
from tests.helpers import push_plan, sign
from tests.qemu_lab import PLAN, Lab, make_lab
from tests.volume_images import tree_key
from tests.zfs_images import DATASET, make_pool

ISSUE = 15
ZFS_PLAN = (
    'default_target = "debian"\n'
    'target "debian" {\n  cmdline = "console=ttyS0 panic=-1"\n'
    f'  disk {{\n    fs = "zfs"\n    device = "{DATASET}"\n  }}\n}}\n'
).encode()


def _reads(lab: Lab, plan: bytes, name: str, runs: int) -> list[float]:
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    boots = [agent_boot(lab, f"{name}-{i}") for i in range(runs)]
    for boot in boots:
        if "read" not in boot.steps:
            raise SystemExit(f"{name}: no read step; serial log tail:\n" + boot.log[-3000:])
    return [b.steps["read"] for b in boots]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_report_options(parser)
    args = parser.parse_args()
    runs = 1 if args.quick else 2
    with tempfile.TemporaryDirectory(prefix="bench-zfs-") as tmp:
        tree = zfsbuild.guest_tree(Path(tmp) / "zfs-tree")
        extra = f'trees = [ {{ src = "{tree}", dest = "/" }} ]'
        with make_lab(Path(tmp) / "lab", initramfs_extra=extra) as lab:
            ext4 = statistics.median(_reads(lab, PLAN, "ext4", runs))
            target = lab.root / "target-tree"
            pool = make_pool(target, lab.root / "zfs", tree_key(target) + " zfs tar")
            zfs = statistics.median(_reads(dataclasses.replace(lab, target=pool), ZFS_PLAN,
                                           "zfs", runs))  # fmt: skip
    print("agent read step, x86_64 TCG (Debian cloud kernel + marker initrd):")
    print(f"  Debian ext4 (userland)      {ext4:7.3f} s")
    print(f"  Proxmox ZFS rpool/ROOT/pve-1 {zfs:7.3f} s  {zfs / ext4:5.2f}x ext4")
    emit([Row(ISSUE, "read step: Debian ext4 (userland), ZFS image", ext4, "s"),
          Row(ISSUE, "read step: Proxmox ZFS dataset", zfs, "s",
              "read step: Debian ext4 (userland), ZFS image", ext4)], args.json)  # fmt: skip


if __name__ == "__main__":
    main()
