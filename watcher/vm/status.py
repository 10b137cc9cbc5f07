"""What a VM backend is to its callers: the ``VmBackend`` protocol and the state it reports.

The CLI, the watcher's supervisor and the tests talk to this interface only; QEMU and
vfkit implement it through ``watcher.vm.backend.ProcessBackend``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from watcher.vm import nvram
from watcher.vm.spec import VmSpec


class VmState(enum.Enum):
    RUNNING = "running"
    #: Not running, and nobody wanted it running (never started, or `vm down`).
    STOPPED = "stopped"
    #: Not running although it should be: it stopped on its own, crashed, or was killed.
    EXITED = "exited"


@dataclass(frozen=True)
class VmStatus:
    state: VmState
    pid: int | None
    uptime_s: float | None
    nvram: nvram.NvramInfo
    serial_tail: list[str]
    backend: str
    #: What the hypervisor itself says (QMP ``running``, ``VirtualMachineStateRunning``).
    guest_state: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "pid": self.pid,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 1),
            "backend": self.backend,
            "guest_state": self.guest_state,
            "nvram": self.nvram.to_json(),
            "serial_tail": self.serial_tail,
        }


class VmBackend(Protocol):
    spec: VmSpec

    def up(self, *, reset_nvram: bool = False) -> VmStatus: ...
    def relaunch(self, *, continue_log: bool = False) -> VmStatus | None: ...
    def reboot_ends_process(self, on: bool) -> int | None: ...
    def down(self, timeout: float = 5.0) -> bool: ...
    def restart(self, reset_nvram: bool, *, stop_timeout: float = 5.0) -> VmStatus: ...
    def restart_staged(
        self, stage: Callable[[], str], *, stop_timeout: float = 5.0
    ) -> tuple[VmStatus, str | None]: ...
    def reset_nvram(self) -> None: ...
    def forget_staged_target(self) -> bool: ...
    def status(self) -> VmStatus: ...
    def state(self) -> VmState: ...
    def wait_stopped(self, timeout: float) -> bool: ...
