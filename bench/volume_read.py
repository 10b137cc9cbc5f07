"""The agent's read step per volume layout under QEMU TCG (x86_64, OVMF), as a ratio to
the plain ext4 disk's: the same lab target (Debian cloud kernel, 14 MB, and a marker
initrd) as plain ext4, inside LUKS2 (Argon2id, 32 MiB, t=4; 512-byte sectors), inside
md RAID1 (metadata 1.2, two members) and in an LVM linear LV (two segments); and the RHEL
layout (tests/rhel_image.py: xfs root LV in two segments next to an xfs /boot), which the
guest mounts through a read-only device-mapper table and the kernel's xfs driver.

The read step is the agent's ``step read`` line: device discovery, the volume's opening
(for LUKS the key slot's KDF), and locating (LUKS: decrypting) the kernel and initrd.

Usage: .venv/bin/python bench/volume_read.py [--quick] [--json PATH]
(each layout boots twice and the median counts; ``--quick``: once)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Row, add_report_options, emit
from tests.helpers import push_plan, sign
from tests.qemu_lab import MARKER, PLAN, Lab, boot, make_lab, target_kernel
from tests.rhel_image import rhel_disk
from tests.volume_images import LVM_LAB, MD_RAID1, disk_plan, make_luks, tree_key
from tests.volume_vm import make_volumes

SECRET = "bench-volume-secret"


def read_step(lab: Lab, plan: bytes, name: str) -> float:
    digest = push_plan(lab.registry.url, "plans/web", "latest", plan)
    sign(lab.registry.url, "plans/web", f"{lab.registry.address}/plans/web", digest, lab.key)  # type: ignore[arg-type]
    log, _vars = boot(lab, name, MARKER, timeout=600)
    found = re.search(r"cloud-boot: \S+ step read ([\d.]+)s", log)
    if found is None or MARKER not in log:
        raise SystemExit(
            f"{name}: the boot did not read and stage; serial log tail:\n{log[-3000:]}"
        )
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_report_options(parser)
    args = parser.parse_args()
    runs = 1 if args.quick else 2
    with tempfile.TemporaryDirectory(prefix="bench-volumes-") as tmp, make_lab(Path(tmp)) as lab:
        luks = make_luks(lab.target, lab.root / "t.luks2", SECRET.encode(), sector_size=512)
        disks = make_volumes(MD_RAID1, lab.target, (80, 80), lab.root / "md",
                             payload_key=tree_key(lab.root / "target-tree"))  # fmt: skip
        (lv_disk,) = make_volumes(LVM_LAB, lab.target, (96,), lab.root / "lvm",
                                  payload_key=tree_key(lab.root / "target-tree"))  # fmt: skip
        layouts = {
            "ext4": (lab, PLAN),
            "LUKS2 + ext4": (dataclasses.replace(lab, target=luks), disk_plan("/dev/vdc", SECRET)),
            "md RAID1 + ext4": (
                dataclasses.replace(lab, target=disks[0], more_targets=(disks[1],)),
                disk_plan("/dev/md/root"),
            ),
            "LVM + ext4": (dataclasses.replace(lab, target=lv_disk), disk_plan("/dev/vg0/root")),
            "RHEL: LVM + xfs (dm linear)": (
                dataclasses.replace(lab, target=rhel_disk(lab.root / "rhel", *target_kernel(lab))),
                disk_plan("/dev/rhel/root", fs="xfs"),
            ),
        }
        took = {
            name: statistics.median(
                read_step(layout, plan, f"{i}-{name.split()[0]}-{n}") for n in range(runs)
            )
            for i, (name, (layout, plan)) in enumerate(layouts.items())
        }
    base = took["ext4"]
    rows = []
    print("agent step read, x86_64 TCG (median of", runs, "boots):")
    for name, seconds in took.items():
        print(f"  {name:<28} {seconds:7.3f} s   {seconds / base:5.2f}x ext4")
        rows.append(Row(15, f"agent step read, {name}", seconds, "s",
                        None if name == "ext4" else "agent step read, ext4",
                        None if name == "ext4" else base))  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
