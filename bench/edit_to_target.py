"""The live-reload loop end to end: a plan edit -> the new target running, vs two bare boots.

``cloudboot up`` runs in a fresh workspace (tests/e2e/harness.py: embedded registry, signed
plan, guest-agent boot.iso, cache disk, demo target disk, QEMU/OVMF under TCG). Each edit
flips ``default_target`` (alpha <-> beta); the clock runs from the file write to the line
``CLOUDBOOT-TARGET-UP target=<new>`` on the serial console (median over the edits).

The floor is the two boots the loop cannot avoid, measured in the same QEMU (the argv the
VM backend builds from the same workspace config, on copies of its disks, each boot from
the image's settled NVRAM: the store the firmware leaves after a first pass from its
template, taken by one untimed boot, as the loop's restarts restore it,
watcher/vm/settle.py), QEMU start to marker:
(a) the bootstrap: a boot.iso built from the repo recipe with init = "busybox-marker",
    to ``CLOUDBOOT-INIT-OK``;
(b) the target: the same Debian kernel + the demo target initrd as a UKI
    (publisher.media.uki) on a boot.iso, to ``CLOUDBOOT-TARGET-UP``.
The floors are paired with the edits: right before each edit the loop's VM is paused
(QMP stop, so it shares no CPU) and one (a) and one (b) boot run beside it. Each edit's
ratio is against the floors booted just before it, and a loop's ratio is the median of
its edits' ratios. This machine's speed moves by tens of percent within minutes (two
runs of the same code 11 minutes apart read 1.12x and 1.49x when the floors were booted
only before and after all the loops); a floor next to its edit moves with it.

The loop's time is split into stages that add up to it: watcher (edit -> VM restart
requested, from the JSON log's ``vm stage done`` time minus its duration_ms), VM stop +
start, firmware + kernel + initramfs to python ready, agent steps (the ``step X N.NNNs``
lines), menu wait, rest of the agent, reboot -> target marker. Two stages have a floor
counterpart ((a) and (b)); what each stage costs beyond it is its share of the overhead.

After the plan edits the same loop takes as many kernel/recipe.toml cmdline edits (a
``bench.kernel=N`` word): edit -> the rebuilt boot.iso's agent has booted the unchanged
default target again, reported next to a plan edit with what the boot.iso rebuild took.

The kexec loop (``[watch] loop = "kexec"``, its own workspace) runs next, measured the same
way; its floor is the bootstrap boot (a) plus the target kernel's start (the part of (b)
from the kernel banner to the marker): no second firmware pass. Then the host loop
(``[watch] loop = "host"``): the host stages, the VM boots straight into the target; its
floor is one bare target boot (b).

The macOS-shaped loop runs next, measured the same way (tests/e2e/macloop.py: the vfkit
backend driving the vfkit stand-in, a Mac-shaped PATH, vmnet-like NAT with the registry
reached through the bridge forwarder, hvc0, reboot in place); its edit -> new target time
is reported next to the QEMU loop's (same machine, same edits, one after the other).

Usage: .venv/bin/python bench/edit_to_target.py [--edits N] [--quick] [--json PATH]
       [--loops qemu,kexec,host,macos]
(5 edits, or 1 with ``--quick``; ``--json``: rows for bench/report.py). Five, not three:
medians of three edits of the same code moved 1.20x-1.29x for the kexec loop over four
runs on 2026-11-27.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from bench.boot_floors import (  # noqa: E402
    BANNER,
    Floor,
    FloorBoots,
    floor_isos,
    paired_ratio,
    spread_row,
    vcpu_state,
)
from bench.results import Row, add_report_options, emit  # noqa: E402
from publisher.config import load_config  # noqa: E402
from publisher.demodisk import TARGET_MARKER  # noqa: E402
from publisher.media.cachedisk import ensure_cache_disk  # noqa: E402
from tests.e2e.harness import LiveLoop  # noqa: E402
from tests.e2e.macloop import MacLoop  # noqa: E402
from watcher.cli.demo import attach_demo_disk  # noqa: E402
from watcher.vm.spec import VmSpec  # noqa: E402
from watcher.watch.lineclock import LineClock  # noqa: E402
from watcher.watch.reload import (  # noqa: E402
    HOST_STAGES,
    STAGED,
    STAGES as RELOAD_STAGES,
    host_stages,
    split_stages,
)

#: Stage label -> which floor boot it contains (None: the whole stage is loop overhead).
#: The split itself is the watcher's (watcher.watch.reload): `up` prints the same numbers.
FLOOR_OF = {"firmware": "a", "target": "b"}
#: The kernel/recipe.toml cmdline edit inserts its token after this (the workspace recipe's).
KERNEL_EDIT_ANCHOR = "cloudboot.insecure=1 "
STAGES: dict[str, str | None] = {label: FLOOR_OF.get(key) for key, label in RELOAD_STAGES.items()}
#: The kexec loop's exit, split (its "agent, rest" and "reboot -> target marker" stages).
KEXEC_STAGES = ("kexec load (Boot0001 staged -> target loaded)",
                "kexec -> target banner (shutdown, purgatory, decompression)",
                "target banner -> target marker")  # fmt: skip


def log_time(event: dict[str, Any]) -> float:
    """Wall time of a structlog JSON line (``timestamp`` is ISO 8601 UTC)."""
    stamp = str(event["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


def first_event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for event in events:
        if event.get("event") == name:
            return event
    raise SystemExit(f"no {name!r} in the watcher's log after the edit")


#: An edit reaches its target in ~10-20 s under TCG; one that has not in 120 s stalled.
EDIT_TIMEOUT_S = 120.0


def measure_edit(loop: LiveLoop, clock: LineClock, old: str, new: str) -> dict[str, float]:
    """One edit: its total and its stages (seconds), which add up to the total."""
    mark, seen = clock.size(), len(loop.log_events())
    t_edit = loop.edit(loop.plan, f'default_target = "{old}"', f'default_target = "{new}"')
    try:
        t_up, _ = clock.wait(rf"{TARGET_MARKER} target={new}\b", since=mark,
                             timeout=EDIT_TIMEOUT_S, alive=loop.alive)  # fmt: skip
    except TimeoutError as exc:  # the loop's QEMU, asked where its vCPUs are
        state = vcpu_state(VmSpec.from_config(load_config(loop.root)).control_socket)
        raise TimeoutError(f"{exc}\n{state}") from exc
    loop.wait_event(lambda e: e.get("event") == "run done", after=seen)
    events = loop.log_events()[seen:]
    vm = first_event(events, "vm stage done")
    t_vm_done = log_time(vm)
    t_restart = t_vm_done - float(vm["duration_ms"]) / 1000
    times = {"t_edit": t_edit, "t_restart": t_restart, "t_vm_done": t_vm_done, "t_up": t_up}
    if loop.loop == "host":  # no agent pass to split
        stages = {HOST_STAGES[k]: seconds for k, seconds in host_stages(**times).items()}
    else:
        split = split_stages(clock.lines(mark), **times)
        stages = {RELOAD_STAGES[key]: seconds for key, seconds in split.items()}
    if loop.loop == "kexec":
        stages |= kexec_split(clock.lines(mark), t_up)
    plan = first_event(events, "plan stage done")
    return {"total": t_up - t_edit, "plan publish": float(plan["duration_ms"]) / 1000, **stages}


#: The kexec exit's lines: the agent's after loading the target, the old kernel's last.
KEXEC_LOADED = re.compile(r"kexec: target loaded")
KEXEC_START = re.compile(r"kexec_core: Starting new kernel")


def _seen(lines: list[tuple[float, str]], regex: re.Pattern[str], after: float = 0.0) -> float:
    found = next((seen for seen, text in lines if seen >= after and regex.search(text)), None)
    if found is None:
        raise SystemExit(f"no {regex.pattern!r} on the console after the edit")
    return found


def kexec_split(lines: list[tuple[float, str]], t_up: float) -> dict[str, float]:
    """Where the kexec exit's time goes: the load (kexec(8) reads the images; on the
    kexec_file_load fallback the kernel also hashes them and checks the signature), the
    old kernel's shutdown + purgatory (which hashes again only on that fallback) + the new
    kernel's decompression up to its banner, and the banner -> marker part that the
    floor's "target kernel start" is."""
    t_staged = _seen(lines, STAGED)
    t_loaded = _seen(lines, KEXEC_LOADED, t_staged)
    t_start = _seen(lines, KEXEC_START, t_loaded)
    t_banner = _seen(lines, BANNER, t_start)
    return {KEXEC_STAGES[0]: t_loaded - t_staged, KEXEC_STAGES[1]: t_banner - t_loaded,
            KEXEC_STAGES[2]: t_up - t_banner}  # fmt: skip


def measure_edit_again_once(
    loop: LiveLoop, clock: LineClock, old: str, new: str
) -> dict[str, float]:
    """An edit whose boot stalled (a target boot under TCG has stopped mid-kernel for
    good, 2026-11-27; measure_floor says more) is edited back, unmeasured, and measured
    once more, against the floors booted before the stalled try; said on stderr."""
    try:
        return measure_edit(loop, clock, old, new)
    except TimeoutError as exc:
        print(f"edit {old} -> {new} stalled; back to {old}, then again: {exc}", file=sys.stderr)
    measure_edit(loop, clock, new, old)
    return measure_edit(loop, clock, old, new)


def measure_kernel_edit(loop: LiveLoop, clock: LineClock, target: str, n: int) -> dict[str, float]:
    """One kernel/recipe.toml cmdline edit: edit -> the rebuilt boot.iso's agent boots the
    (unchanged) default target, and what the boot.iso rebuild took of it."""
    mark, seen = clock.size(), len(loop.log_events())
    if n == 0:
        old, new = KERNEL_EDIT_ANCHOR, f"{KERNEL_EDIT_ANCHOR}bench.kernel=0 "
    else:
        old, new = f"bench.kernel={n - 1} ", f"bench.kernel={n} "
    t_edit = loop.edit(loop.recipe, old, new)
    clock.wait(rf"[Cc]ommand line: .*bench\.kernel={n}\b", since=mark, alive=loop.alive)
    t_up, _ = clock.wait(rf"{TARGET_MARKER} target={target}\b", since=mark, alive=loop.alive)
    loop.wait_event(lambda e: e.get("event") == "run done", after=seen)
    build = first_event(loop.log_events()[seen:], "kernel stage done")
    return {"total": t_up - t_edit, "build": float(build["duration_ms"]) / 1000}


def run_loop(
    loop: LiveLoop,
    edits: int,
    kernel_edits: int = 0,
    before_edit: Callable[[], None] | None = None,
) -> tuple[float, list[dict[str, float]], list[dict[str, float]]]:
    """`cloudboot up` -> first target (s), then ``edits`` measured plan edits (each after
    ``before_edit``) and ``kernel_edits`` kernel/ cmdline edits; the loop stops."""
    with contextlib.ExitStack() as stack:
        started = time.time()
        loop.start()
        stack.callback(loop.stop)
        clock = stack.enter_context(LineClock(loop.serial.path))
        t_first, _ = clock.wait(rf"{TARGET_MARKER} target=alpha\b", timeout=900,
                                alive=loop.alive)  # fmt: skip
        runs, current = [], "alpha"
        for _ in range(edits):
            new = "beta" if current == "alpha" else "alpha"
            if before_edit is not None:
                before_edit()
            runs.append(measure_edit_again_once(loop, clock, current, new))
            current = new
        kernel_runs = [measure_kernel_edit(loop, clock, current, n) for n in range(kernel_edits)]
    return t_first - started, runs, kernel_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=None, help="default 5 (--quick: 1)")
    loops_help = "any of qemu (two passes), kexec, host (need qemu), macos (default: all four)"
    parser.add_argument("--loops", default="qemu,kexec,host,macos", help=loops_help)
    add_report_options(parser)
    args = parser.parse_args()
    edits = args.edits or (1 if args.quick else 5)
    loops = set(args.loops.split(","))
    if unknown := loops - {"qemu", "kexec", "host", "macos"}:
        parser.error(f"--loops: unknown loop {', '.join(sorted(unknown))}")
    if loops & {"kexec", "host"} and "qemu" not in loops:
        parser.error("--loops: kexec and host are measured beside the qemu loop; add qemu")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2t-") as tmp_name:
        tmp = Path(tmp_name)
        qemu_total = None
        if "qemu" in loops:
            loop = LiveLoop(tmp / "ws", cpus=2)
            loop.create_workspace()  # `cloudboot init`: not part of the first-boot time
            # The floor VM attaches the workspace's disks: make them before `up` would.
            config, _ = attach_demo_disk(load_config(loop.root))
            ensure_cache_disk(config.build.cache_disk, config.build.cache_disk_size_mib)
            spec = VmSpec.from_config(config)
            marker_iso, target_iso = floor_isos(tmp)
            boots = FloorBoots.prepare(spec, marker_iso, target_iso, tmp / "floors")
            before_edit, floors = boots.beside(loop, tmp / "floors" / "qemu")
            first, runs, kernel_runs = run_loop(loop, edits, edits, before_edit)
            fast: dict[str, tuple[list[dict[str, float]], list[Floor]]] = {}
            for mode in ("kexec", "host"):
                if mode in loops:
                    other = LiveLoop(tmp / f"{mode}-ws", loop=mode, cpus=2)
                    other.create_workspace()
                    before_edit, mode_floors = boots.beside(other, tmp / "floors" / mode)
                    fast[mode] = (run_loop(other, edits, before_edit=before_edit)[1], mode_floors)
            rows += summarise(runs, floors, edits)
            every = floors + [f for _, mode_floors in fast.values() for f in mode_floors]
            rows.append(spread_row(every))
            note = (
                "fresh workspace: key, registry, publish, build, boot; its demo and cache"
                " disks made before, for the floors"
            )
            rows.append(Row(8, "`cloudboot up` -> first target up", first, "s", note=note))
            qemu_total = statistics.median(r["total"] for r in runs)
            rows += summarise_kernel_edit(kernel_runs, qemu_total, edits)
            if "kexec" in fast:
                rows += summarise_kexec(*fast["kexec"], qemu_total, edits)
            if "host" in fast:
                rows += summarise_host(*fast["host"], edits)
        if "macos" in loops:
            mac = MacLoop(tmp / "mac" / "ws", cpus=2)
            mac.create_workspace()  # includes the Linux build host's part: not timed
            mac_first, mac_runs, _ = run_loop(mac, edits)
            rows += summarise_macos(mac_runs, mac_first, qemu_total, edits)
    print_table(rows)
    emit(rows, args.json)


def _stage_note(med: dict[str, float]) -> str:
    return "stages (s): " + ", ".join(f"{name.split(':')[0]} {med[name]:.1f}" for name in STAGES)


def summarise_kexec(
    runs: list[dict[str, float]], floors: list[Floor], two_pass: float, n: int
) -> list[Row]:
    """The kexec loop against its floor: the bootstrap boot plus the target kernel's start
    (banner -> marker in the bare target boot), and below the two-pass loop. Its exit is
    split too: the floor has no kexec load and counts no decompression, so those rows
    say what the kexec path pays that the floor leaves out (against what the firmware
    takes for the same kernel, from starting the image to its banner)."""
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    kernel_b = statistics.median(b[1] for _, b in floors)
    load_b = statistics.median(b[2] for _, b in floors)
    per_edit = [a + b[1] for a, b in floors]
    floor, total = statistics.median(per_edit), med["total"]
    ratio = paired_ratio(runs, per_edit)
    load, jump, start = (med[key] for key in KEXEC_STAGES)
    return [
        Row(8, f"kexec loop: plan edit -> new target running (median of {n})", total, "s",
            "bootstrap boot (a) + target kernel start", floor, ratio=ratio,
            target="<= 1.25x bootstrap boot + target kernel start, below the two-pass loop",
            passed=ratio <= 1.25 and total < two_pass,
            note=f"ratio: median of each edit's against its own floors; two-pass loop "
            f"{two_pass:.2f} s; {_stage_note(med)}"),
        Row(8, "floor: target kernel start (banner -> CLOUDBOOT-TARGET-UP, bare boot)",
            kernel_b, "s"),
        Row(8, f"kexec stage: {KEXEC_STAGES[0]}", load, "s",
            note="not in the floor: kexec(8) reads the target into memory (kexec_load,"
            " no segment hashing: guest/agent/kexec.py)"),
        Row(8, f"kexec stage: {KEXEC_STAGES[1]}", jump, "s",
            "bare boot: firmware starts the target image -> its banner", load_b,
            note="the floor counts the kernel from its banner only"),
        Row(8, f"kexec stage: {KEXEC_STAGES[2]}", start, "s",
            "floor: target kernel start", kernel_b),
    ]  # fmt: skip


def summarise_kernel_edit(runs: list[dict[str, float]], plan_edit: float, n: int) -> list[Row]:
    """kernel/ cmdline edit -> new target running, next to a plan edit's (same loop)."""
    total = statistics.median(r["total"] for r in runs)
    build = statistics.median(r["build"] for r in runs)
    return [
        Row(8, f"kernel/ cmdline edit -> new target running (median of {n})", total, "s",
            "plan edit -> new target running (two-pass loop)", plan_edit,
            note=f"boot.iso rebuild {build:.2f} s of it; the two-pass loop"),
    ]  # fmt: skip


def summarise_host(runs: list[dict[str, float]], floors: list[Floor], n: int) -> list[Row]:
    """The host loop against one bare target boot (the VM boots straight into it)."""
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    per_edit = [b[0] for _, b in floors]
    ratio = paired_ratio(runs, per_edit)
    stages = ", ".join(f"{label} {med[label]:.1f}" for label in HOST_STAGES.values())
    return [
        Row(8, f"host loop: plan edit -> new target running (median of {n})", med["total"],
            "s", "one bare target boot (b)", statistics.median(per_edit), ratio=ratio,
            target="<= 1.10x one bare target boot", passed=ratio <= 1.10,
            note=f"ratio: median of each edit's against its own floor; stages (s): {stages}"),
    ]  # fmt: skip


def summarise_macos(
    runs: list[dict[str, float]], first: float, qemu_total: float | None, n: int
) -> list[Row]:
    """The macOS-shaped loop's rows, against the QEMU loop's edit -> new target time."""
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    rows = [
        Row(8, f"macOS-shaped loop (vfkit stand-in): plan edit -> new target (median of {n})",
            med["total"], "s", "QEMU loop, plan edit -> new target running" if qemu_total
            else None, qemu_total, note=_stage_note(med)),
        Row(8, "macOS-shaped `cloudboot up` -> first target up", first, "s",
            note="vfkit stand-in; build host step (debs, demo disk) not timed"),
    ]  # fmt: skip
    return rows


def summarise(runs: list[dict[str, float]], pairs: list[Floor], n: int) -> list[Row]:
    """Rows: the total against the floor, the two floors, the overhead and its stages."""
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    floor_a = statistics.median(a for a, _ in pairs)
    floor_b = statistics.median(b[0] for _, b in pairs)
    per_edit = [a + b[0] for a, b in pairs]
    floor, ratio = statistics.median(per_edit), paired_ratio(runs, per_edit)
    total = med["total"]
    floors = {"a": ("floor (a): bare bootstrap boot", floor_a),
              "b": ("floor (b): bare target boot", floor_b)}  # fmt: skip
    beyond = {name: med[name] - (floors[part][1] if part else 0.0)
              for name, part in STAGES.items()}  # fmt: skip
    overhead_sum = sum(beyond.values())
    rows = [
        Row(8, f"two-pass loop: plan edit -> new target running (median of {n})", total, "s",
            "two bare boots (a) + (b)", floor, ratio=ratio, target="<= 1.15x two bare boots",
            passed=ratio <= 1.15, note="ratio: median of each edit's against its own floors"),
        Row(8, "floor (a): busybox-marker boot.iso, QEMU start -> CLOUDBOOT-INIT-OK", floor_a, "s"),
        Row(8, "floor (b): target UKI, QEMU start -> CLOUDBOOT-TARGET-UP", floor_b, "s"),
        Row(8, "loop overhead beyond the two bare boots", total - floor, "s",
            "plan edit -> new target running", total),
    ]  # fmt: skip
    for name, part in STAGES.items():
        share = beyond[name] / overhead_sum if overhead_sum else 0.0
        base, base_value = floors[part] if part else (None, None)
        note = f"{beyond[name]:.2f} s beyond its floor" if part else "all overhead"
        if name.startswith("watcher"):
            note += f"; plan publish {med['plan publish'] * 1000:.0f} ms of it"
        rows.append(Row(8, f"stage: {name}", med[name], "s", base, base_value,
                        note=f"{note}, {share:.0%} of the overhead"))  # fmt: skip
    return rows


def print_table(rows: list[Row]) -> None:
    for row in rows:
        base = f"  vs {row.baseline} {row.baseline_value:.2f} s" if row.baseline_value else ""
        ratio = f" = {row.ratio:.2f}x" if row.ratio is not None else ""
        verdict = f"  [{row.target}: {'met' if row.passed else 'MISSED'}]" if row.target else ""
        note = f"  ({row.note})" if row.note else ""
        print(f"{row.metric:<58} {row.value:7.2f} s{base}{ratio}{verdict}{note}")


if __name__ == "__main__":
    main()
