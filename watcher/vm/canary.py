"""The canary gate that really boots: a staged plan in a throwaway QEMU VM (TCG, OVMF).

Why a boot.iso per canary: boot.iso bakes the plan ref into its UKI's command line,
which is signed with the image, and unsigned metadata may not redirect the plan
(docs/trust-model.md). So each canary gets its own boot.iso whose command line names the
plan's staging ref, built with the same recipe and keys by the cmdline-only path of
``publisher.media.build``: the workspace's cached compressed initramfs is reused, so a
canary image costs a UKI and ISO assembly, not a build. It is written into the canary's
temp dir; the workspace's build/boot.iso is never touched.

The VM is the workspace's ``[vm]`` (arch, cpus, memory, disks) with everything writable
made throwaway: a fresh NVRAM copy, a fresh cache disk, the extra disks ``snapshot=on``.
The serial log is judged (``watcher.canary.judge``) as it grows and the VM is stopped as
soon as the verdict is in. This module is the gate ``publisher.canary`` calls: the
publisher never imports the watcher (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import structlog

from publisher.canary import CanaryPolicy, CanaryRequest, CanaryResult
from publisher.config import Accel, Backend, Config, ConfigError, Loop
from publisher.media.build import build_boot_iso, cache_dir
from publisher.media.cachedisk import ensure_cache_disk
from publisher.media.recipe import configured, load_recipe
from publisher.registry import client_from_config
from publisher.run import require_tool, spawn
from watcher.canary import DEFAULT_FAILURES, Patterns, judge, staged
from watcher.vm import nvram
from watcher.vm.firmware import Firmware, find_firmware
from watcher.vm.qemu import kvm_usable, qemu_argv
from watcher.vm.spec import VmSpec

log = structlog.get_logger(__name__)

#: A guest's console is untrusted output: judged up to this size, then the boot fails.
MAX_SERIAL = 8 << 20
POLL_S = 0.5
ALL = "*"


def plan_patterns(config: Config, plan: str) -> Patterns:
    """The success/failure patterns for ``plan`` (relative to plans/); a bad regex is an
    error naming its key before anything is published."""
    section = config.publish

    def pick(key: str, table: dict[str, str]) -> str | None:
        name = plan if plan in table else ALL
        value = table.get(name)
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigError(
                    f'[publish].{key}."{name}": not a regular expression: {exc}',
                    where=config.where,
                ) from None
        return value

    extra = pick("canary_failure", section.canary_failure)
    success = pick("canary_success", section.canary_success)
    return Patterns(success, (*DEFAULT_FAILURES, *([extra] if extra else [])))


def check_canary(config: Config) -> tuple[Firmware, str]:
    """What a canary boot needs (QEMU, firmware, valid patterns), checked before anything
    is built or published; the firmware and the QEMU binary."""
    if config.vm.backend.resolve() is not Backend.QEMU:
        raise ConfigError(
            "[vm].backend: canary boots need QEMU (vfkit canaries are not supported yet)",
            where=config.where,
        )
    for name in {*config.publish.canary_success, *config.publish.canary_failure, ALL}:
        plan_patterns(config, name)
    arch = config.vm_arch()
    return find_firmware(arch), require_tool(arch.qemu_binary, "qemu-system-x86 / -arm")


class QemuCanary:
    """The gate: boot each staged plan in its own VM; thread-safe (canaries run in parallel)."""

    def __init__(self, config: Config, workdir: Path | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.firmware, self.binary = check_canary(config)
        self._build_lock = threading.Lock()  # one CPU-bound image build at a time

    def boot_iso(self, staged: str, into: Path) -> Path:
        """The canary's own boot.iso: the workspace's recipe, ``{plan}`` = the staging ref."""
        config = self.config  # the fleet's Path C boot, whatever loop the developer uses
        guest = dataclasses.replace(
            config, watch=dataclasses.replace(config.watch, loop=Loop.GUEST)
        )
        recipe = configured(load_recipe(config.build.recipe), guest, plan=staged)
        out = into / "boot.iso"
        with self._build_lock:
            build_boot_iso(recipe, out, [config.vm_arch()],
                           registry=lambda: client_from_config(config.registry),
                           blob_cache=cache_dir(config.build.iso))  # fmt: skip
        return out

    def spec(self, iso: Path, into: Path) -> VmSpec:
        base = VmSpec.from_config(self.config)
        spec = dataclasses.replace(
            base, iso=iso, cache_disk=into / "cache.raw", nvram=into / "nvram.fd",
            serial_log=into / "serial.log", state_dir=into, gui=False, scratch_disks=True,
        )  # fmt: skip
        ensure_cache_disk(spec.cache_disk, self.config.build.cache_disk_size_mib)
        nvram.restore_template(spec.nvram, self.firmware.vars_template)
        spec.check_files()
        return spec

    def __call__(self, request: CanaryRequest, deadline: float) -> CanaryResult:
        rel = request.plan.resolve().relative_to(self.config.plans_dir.resolve()).as_posix()
        patterns = plan_patterns(self.config, rel)
        into = Path(tempfile.mkdtemp(prefix="cloudboot-canary-", dir=self.workdir))
        try:
            iso = self.boot_iso(request.staged, into)
            return self.watch(self.spec(iso, into), patterns, deadline)
        finally:
            shutil.rmtree(into, ignore_errors=True)

    def watch(self, spec: VmSpec, patterns: Patterns, deadline: float) -> CanaryResult:
        """Boot ``spec`` and judge its serial log until a verdict, an exit or a timeout.

        Under TCG the agent's reboot ends the first QEMU (``qemu_argv(reboot_ends=True)``) and
        the second pass (firmware -> Boot0001 -> target) runs in a fresh process from the
        same vars file and disks, as ``up``'s supervisor does: a warm reset after the
        agent's Python costs seconds of firmware time (docs/ARCHITECTURE.md §3 step 12).
        The guest sees a power cycle, which a fleet machine may get too.
        """
        accel = spec.accel
        if accel is Accel.AUTO:
            accel = Accel.KVM if kvm_usable(spec.arch) else Accel.TCG
        handoff = accel is Accel.TCG
        until = min(deadline, time.monotonic() + self.config.publish.canary_boot_seconds)
        while True:
            argv = qemu_argv(spec, self.firmware, accel=accel, binary=self.binary,
                             reboot_ends=handoff)  # fmt: skip
            with spawn(argv, stdout=spec.state_dir / "qemu.log", grace=1) as proc:
                verdict = self._judge_until(proc, spec, patterns, until, deadline, handoff)
            if verdict is not None:
                return verdict
            log.debug("canary: second pass in a fresh QEMU", serial=str(spec.serial_log))
            handoff = False

    def _judge_until(
        self, proc: subprocess.Popen[bytes], spec: VmSpec, patterns: Patterns,
        until: float, deadline: float, handoff: bool,
    ) -> CanaryResult | None:  # fmt: skip
        """The verdict on this process's run; None when it ended on the agent's reboot
        (``handoff``), so the second pass is to be started."""
        while True:
            exited = proc.poll() is not None
            timed_out = time.monotonic() >= until
            serial = _read_serial(spec.serial_log)
            if serial is None:
                return CanaryResult(False, f"serial log over {MAX_SERIAL >> 20} MiB")
            if handoff and exited and proc.returncode == 0 and staged(serial):
                return None
            verdict = judge(serial, patterns, finished=exited or timed_out)
            if verdict is not None:
                return _explain(verdict, exited, timed_out, until >= deadline, spec)
            time.sleep(POLL_S)


def _read_serial(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SERIAL + 1)
    except FileNotFoundError:
        return ""
    return None if len(data) > MAX_SERIAL else data.decode(errors="replace")


def _explain(
    verdict: CanaryResult, exited: bool, timed_out: bool, run_deadline: bool, spec: VmSpec
) -> CanaryResult:
    """Say why an undecided boot ended: the VM exited, its time or the run's ran out."""
    if verdict.passed or verdict.result.startswith("failure pattern"):
        return verdict
    if exited:
        why = f"{verdict.result}: the VM exited"
        qemu_log = (spec.state_dir / "qemu.log").read_text(errors="replace").strip()
        if qemu_log:
            why += f" ({qemu_log.splitlines()[-1][:200]})"
    elif timed_out and run_deadline:
        why = "deadline"
    else:
        why = f"{verdict.result} in time"
    return dataclasses.replace(verdict, result=why)


def canary_policy(config: Config, workdir: Path | None = None) -> CanaryPolicy:
    """``[publish]``'s canary settings with the QEMU gate, for ``publish_workspace``."""
    section = config.publish
    gate = QemuCanary(config, workdir)
    return CanaryPolicy(gate, section.canary_parallel, float(section.canary_deadline_seconds))
