"""The agent's read step per disk layout under QEMU TCG (x86_64, OVMF), as a ratio to the
ext4 read step: the same lab and kernel as bench/guest_boot.py, the target disk swapped
for each layout of tests/disk_images.py (Fedora btrfs, RHEL xfs /boot, btrfs RAID1 over
two disks; images cached by recipe hash). ext4 is read in userland; xfs and btrfs are
mounted read-only through the kernel's drivers, their modules loaded on demand, so their
read step includes the modprobe (docs/disks.md).

Also: the plain ext4 boot's ``init`` step (module loading) and total, so a regression
from packing xfs/btrfs would show; compare with bench/guest_boot.py's history.

Usage: .venv/bin/python bench/disk_read.py [--quick] [--json PATH]
(each layout boots 2 times and each number is the median; ``--quick``: once)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.guest_boot import agent_boot
from bench.results import Row, add_report_options, emit
from tests.disk_images import boot_layouts
from tests.helpers import push_plan, sign
from tests.qemu_lab import PLAN, boot_disk_layout, make_lab

ISSUE = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_report_options(parser)
    args = parser.parse_args()
    runs = 1 if args.quick else 2
    reads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp, make_lab(Path(tmp)) as lab:
        digest = push_plan(lab.registry.url, "plans/web", "latest", PLAN)
        sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
        ext4 = [agent_boot(lab, f"ext4-{i}") for i in range(runs)]
        for boot in ext4:
            if "read" not in boot.steps:
                raise SystemExit(
                    "the ext4 boot did not read; serial log tail:\n" + boot.log[-3000:]
                )
        reads["ext4"] = statistics.median(b.steps["read"] for b in ext4)
        init = statistics.median(b.steps.get("init", 0.0) for b in ext4)
        total = statistics.median(sum(b.steps.values()) for b in ext4)
        for name in ("fedora", "rhel", "mirror"):
            took = []
            for i in range(runs):
                log = boot_disk_layout(lab, name, boot_layouts)
                found = [line for line in log.splitlines() if " step read " in line]
                if not found:
                    raise SystemExit(f"{name}: no read step; serial log tail:\n" + log[-3000:])
                took.append(float(found[-1].rsplit(" ", 1)[-1].rstrip("s")))
                (lab.root / name).rename(lab.root / f"{name}-{i}")
            reads[name] = statistics.median(took)
    labels = {"ext4": "Debian ext4 (userland)", "fedora": "Fedora btrfs, root subvolume",
              "rhel": "RHEL xfs /boot", "mirror": "btrfs RAID1, two disks"}  # fmt: skip
    print("agent read step per layout, x86_64 TCG (Debian cloud kernel + marker initrd):")
    rows: list[Row] = []
    for name, took in reads.items():
        ratio = took / reads["ext4"]
        print(f"  {labels[name]:<30} {took:7.3f} s  {ratio:5.2f}x ext4")
        rows.append(Row(ISSUE, f"read step: {labels[name]}", took, "s",
                        "read step: Debian ext4 (userland)", reads["ext4"]))  # fmt: skip
    print(f"  plain ext4 boot: init step {init:.3f} s, agent steps total {total:.3f} s")
    rows += [Row(ISSUE, "plain ext4 boot: init step (modules)", init, "s"),
             Row(ISSUE, "plain ext4 boot: agent steps total", total, "s")]  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
