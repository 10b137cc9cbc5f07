"""The floors of bench/edit_to_target.py: bare boots of the images the loop cannot avoid,
QEMU as the VM backend runs it, each from the image's settled NVRAM (watcher/vm/settle.py),
on copies of the workspace's disks, paired with the edits they are compared with.

Why paired: this machine's speed moves by tens of percent within minutes, so a floor
booted at one end of a run says little about an edit in the middle of it. Right before
each edit the loop's VM is paused (QMP ``stop``: it then shares no CPU) and one pair of
floor boots runs beside it; that edit is compared with that pair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.results import Row
from guest.contract.arch import Arch
from publisher.config import Accel, load_config
from publisher.demodisk import TARGET_MARKER
from publisher.media.build import build_boot_iso
from publisher.run import run, spawn
from tests.e2e.harness import LiveLoop
from tests.qemu_boot import demo_target_iso, repo_recipe
from watcher.vm.firmware import find_firmware
from watcher.vm.nvram import restore_template
from watcher.vm.qemu import kvm_usable, qemu_argv
from watcher.vm.qmp import QmpClient, QmpError
from watcher.vm.settle import capture
from watcher.vm.spec import VmSpec
from watcher.watch.lineclock import LineClock

INIT_MARKER = "CLOUDBOOT-INIT-OK"
#: The demo plan's target cmdline (plans/default.hcl), as the floor UKI bakes it in, less
#: its console=hvc0 (vfkit's console): QEMU has none, and the demo target no longer waits
#: for it there (publisher/demodisk.py), so the word costs the loop nothing the floor skips.
TARGET_CMDLINE = "console=ttyS0 root=LABEL=cbtarget ro cloudboot.demo=floor"
#: The kernel's first line: where the firmware's part of a boot ends.
BANNER = re.compile(r"Linux version ")


@contextlib.contextmanager
def bare_vm(
    spec: VmSpec, iso: Path, work: Path, store: Path | None = None
) -> Iterator[tuple[float, LineClock]]:
    """QEMU as the backend runs it, booting ``iso`` with a copy of ``store`` as NVRAM (the
    template when None); yields its start time."""
    work.mkdir(parents=True, exist_ok=True)
    run_spec = bare_spec(spec, work, iso)
    firmware = find_firmware(run_spec.arch)
    restore_template(run_spec.nvram, store or firmware.vars_template)
    accel = run_spec.accel
    if accel is Accel.AUTO:
        accel = Accel.KVM if kvm_usable(run_spec.arch) else Accel.TCG
    argv = qemu_argv(run_spec, firmware, accel=accel)
    with LineClock(run_spec.serial_log) as clock:
        start = time.time()
        with spawn(argv, stdout=work / "qemu.log", grace=2):
            yield start, clock


def bare_spec(spec: VmSpec, work: Path, iso: Path | None = None) -> VmSpec:
    """``spec`` with its state (NVRAM, serial log, QMP socket) under ``work``."""
    return dataclasses.replace(spec, iso=iso or spec.iso, state_dir=work,
                               nvram=work / "nvram.fd", serial_log=work / "serial.log")  # fmt: skip


def floor_isos(out: Path) -> tuple[Path, Path]:
    """(a) busybox-marker boot.iso from the repo recipe; (b) target UKI on a boot.iso."""
    marker_iso = out / "marker.iso"
    build_boot_iso(repo_recipe("busybox-marker"), marker_iso, [Arch.X86_64])
    return marker_iso, demo_target_iso(out, TARGET_CMDLINE)


def settled_store(spec: VmSpec, iso: Path, work: Path) -> Path:
    """One untimed boot of ``iso`` from the template; the store the firmware left at the
    kernel's banner, as the VM backend keeps it for the loop's restarts."""
    with bare_vm(spec, iso, work) as (_, clock):
        clock.wait(BANNER.pattern, timeout=300)
        return capture(work / "nvram.fd", bare_spec(spec, work).control_socket, "floor")


#: A floor boot takes ~10 s under TCG. About one boot in a hundred (four in bench runs of
#: 2026-11-27, none in 240 boots outside them) stalls for good ~1 s into the stock
#: kernel's boot, right after "clocksource: Switched to clocksource hpet". The one caught
#: with vcpu_state: both vCPUs running with interrupts off, vCPU 0 at a static-key NOP in
#: hrtimer_start_range_ns (the same RIP a second apart), vCPU 1 in the int3 trap path
#: (asm_exc_int3, ct_nmi_exit): the kernel patching its own text (text_poke_bp) while
#: the other vCPU runs it, which QEMU 7.2's multi-threaded TCG apparently never lets
#: finish. ``-accel tcg,thread=single`` would avoid that race but cost the agent's boot
#: 0.5 s (7.8 -> 8.3 s to python ready, 3 boots each), so the stalled boot is dropped and
#: booted again, once, and said on stderr.
FLOOR_TIMEOUT_S = 90.0


def measure_floor(
    spec: VmSpec, iso: Path, marker: str, work: Path, store: Path
) -> tuple[float, float, float]:
    """QEMU start -> ``marker``, the kernel's part of it (its banner -> ``marker``), and
    the firmware's start of the image -> the banner (load, EFI stub, decompression)."""
    try:
        return _boot_once(spec, iso, marker, work / "try1", store)
    except TimeoutError as exc:
        print(f"floor boot of {iso.name} stalled; booting it again: {exc}", file=sys.stderr)
    return _boot_once(spec, iso, marker, work / "try2", store)


def _boot_once(
    spec: VmSpec, iso: Path, marker: str, work: Path, store: Path
) -> tuple[float, float, float]:
    with bare_vm(spec, iso, work, store) as (start, clock):
        try:
            seen, _ = clock.wait(marker, timeout=FLOOR_TIMEOUT_S)
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc}\n{vcpu_state(bare_spec(spec, work).control_socket)}"
            ) from exc
        kernel, _ = clock.first(BANNER)
        loading, _ = clock.first(r"BdsDxe: starting")
    return seen - start, seen - kernel, kernel - loading


#: What ``info registers`` lines say where a vCPU is and whether it sleeps.
VCPU_LINES = re.compile(r"^(CPU#\d+|RIP=|CR0=)")


def vcpu_state(qmp_socket: Path) -> str:
    """Where a stalled VM's vCPUs are, asked twice a second apart (QMP status, then each
    vCPU's RIP, flags and HLT state from ``info registers -a``): a stall the guest caused
    shows moving or halted vCPUs, a QEMU that hangs does not answer. For the record of a
    stall (measure_floor's docstring), never for a number."""
    said = []
    try:
        with QmpClient(qmp_socket, timeout=10.0) as qmp:
            said.append(f"QEMU status: {qmp.execute('query-status')}")
            for _ in range(2):
                regs = str(qmp.execute("human-monitor-command",
                                       {"command-line": "info registers -a"}))  # fmt: skip
                said += [line for line in regs.splitlines() if VCPU_LINES.match(line)]
                time.sleep(1.0)
    except (OSError, QmpError) as exc:
        said.append(f"QMP at {qmp_socket}: {exc}")
    return "vCPUs:\n" + "\n".join(said)


#: (a)'s total and (b)'s three numbers (measure_floor), one pair per edit.
Floor = tuple[float, tuple[float, float, float]]


def floor_spec(spec: VmSpec, work: Path) -> VmSpec:
    """The same devices on copies of the workspace's disks: floors boot while a loop's VM
    (paused) holds the originals, which QEMU locks for writing."""
    work.mkdir(parents=True, exist_ok=True)

    def copy(path: Path) -> Path:
        dest = work / path.name
        run(["cp", "--sparse=always", path, dest])
        return dest

    return dataclasses.replace(spec, cache_disk=copy(spec.cache_disk),
                               disks=tuple(copy(d) for d in spec.disks))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FloorBoots:
    """What a floor pair boots: the spec on disk copies, the two images, their stores."""

    spec: VmSpec
    marker_iso: Path
    target_iso: Path
    stores: tuple[Path, Path]

    @classmethod
    def prepare(cls, spec: VmSpec, marker_iso: Path, target_iso: Path, work: Path) -> FloorBoots:
        fspec = floor_spec(spec, work / "disks")
        stores = (settled_store(fspec, marker_iso, work / "settle-a"),
                  settled_store(fspec, target_iso, work / "settle-b"))  # fmt: skip
        return cls(fspec, marker_iso, target_iso, stores)

    def pair(self, work: Path) -> Floor:
        a = measure_floor(self.spec, self.marker_iso, INIT_MARKER, work / "a", self.stores[0])
        b = measure_floor(self.spec, self.target_iso, TARGET_MARKER, work / "b", self.stores[1])
        return a[0], b

    def beside(self, loop: LiveLoop, work: Path) -> tuple[Callable[[], None], list[Floor]]:
        """A ``before_edit`` for :func:`run_loop` that boots one pair with ``loop``'s VM
        paused, and the list it fills."""
        floors: list[Floor] = []
        socket = VmSpec.from_config(load_config(loop.root)).control_socket

        def before_edit() -> None:
            with QmpClient(socket) as qmp:
                qmp.execute("stop")
            try:
                floors.append(self.pair(work / str(len(floors))))
            finally:
                with QmpClient(socket) as qmp:
                    qmp.execute("cont")

        return before_edit, floors


def paired_ratio(runs: list[dict[str, float]], floors: list[float]) -> float:
    """The median of each edit's total over the floor booted just before it."""
    return statistics.median(r["total"] / f for r, f in zip(runs, floors, strict=True))


def spread_row(floors: list[Floor]) -> Row:
    """How far the machine's speed moved during the run: the slowest floor pair vs the
    fastest (why each edit is compared with its own)."""
    sums = [a + b[0] for a, b in floors]
    return Row(8, "machine spread: floors (a) + (b), slowest pair", max(sums), "s",
               "fastest pair", min(sums),
               note=f"{len(sums)} pairs, one before each edit of each loop")  # fmt: skip
