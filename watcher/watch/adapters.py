"""The real stages behind the watcher's pipeline, and the ``WatchSetup`` a config yields.

Each adapter is a thin translation from the pipeline's small protocols to the
publishing, boot-media and VM APIs; all policy (ordering, retries of a whole run, failure
isolation) stays in ``pipeline``. Imports of the heavier host modules happen when a stage
is built, so ``cloudboot status`` stays fast.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from guest.contract.errors import CloudbootError
from publisher.config import Backend, Config, Loop, load_config
from publisher.ignore import IgnoreRules
from publisher.registry import client_from_config
from publisher.signing import SigningKey
from watcher.vm import VmBackend, VmSpec, VmState
from watcher.vm.supervisor import Supervisor
from watcher.watch.daemon import WatchSetup
from watcher.watch.pipeline import BuildStage, PlanStage

log = structlog.get_logger(__name__)

#: Where the watcher keeps its status document, relative to the workspace root.
STATUS_FILE = Path(".cloudboot/status.json")


class BackendVmStage:
    """Restarts the workspace VM with a fresh NVRAM store; remembers who started it.

    A VM already running when the watcher first touches it belongs to someone else
    (``cloudboot vm up`` in another terminal): the watcher restarts it on changes but
    leaves it running when the watcher stops.

    With ``supervise`` (the default) a background supervisor (watcher/vm/supervisor.py)
    keeps the guest's second pass going. vfkit: VZ usually resets a rebooting guest in
    place, but should it report the reboot as a stop, vfkit exits, and the supervisor
    relaunches any VM that stopped on its own WITHOUT touching NVRAM, so the Boot0001 the
    guest agent just staged boots. QEMU: an exit means the guest powered off and is left
    alone; only the agent's reboot after each restart is handed to a fresh process under
    TCG (a warm reset there is seconds slower), relaunched at once with the same NVRAM.
    """

    def __init__(
        self,
        backend: VmBackend,
        *,
        stop_timeout_s: float = 1.0,
        supervise: bool | None = None,
        host_stage: Callable[[], str] | None = None,
    ) -> None:
        self.backend = backend
        self.host_stage = host_stage  # the host loop: stage into the stopped VM's images
        self.staged_target: str | None = None  # what the host staged at the last restart
        self.stop_timeout_s = stop_timeout_s
        self._started_by_watcher = False
        self._seen = False
        any_stop = backend.spec.backend is Backend.VFKIT
        self.supervisor = (
            None if supervise is False else Supervisor(backend, relaunch_any_stop=any_stop)
        )
        self._supervision_stop = threading.Event()
        self._supervision: threading.Thread | None = None

    def supervise(self) -> None:
        """Start relaunching a VM that stops on its own (no-op without a supervisor)."""
        if self.supervisor is None or self._supervision is not None:
            return
        self._supervision = threading.Thread(
            target=self.supervisor.run, args=(self._supervision_stop,), name="vm-supervisor",
            daemon=True,
        )  # fmt: skip
        self._supervision.start()

    @property
    def started_by_watcher(self) -> bool:
        return self._started_by_watcher

    def restart(self) -> str:
        if not self._seen:
            self._seen = True
            self._started_by_watcher = self.backend.status().state is not VmState.RUNNING
        if self.host_stage is not None:
            status, self.staged_target = self.backend.restart_staged(
                self.host_stage, stop_timeout=self.stop_timeout_s
            )
        elif self.supervisor is not None:  # under its lock: no relaunch races the restart
            self.supervisor.request_restart(reset_nvram=True, stop_timeout=self.stop_timeout_s)
            status = self.backend.status()
        else:
            status = self.backend.restart(reset_nvram=True, stop_timeout=self.stop_timeout_s)
        self.supervise()
        return status.state.value

    def state(self) -> str:
        return self.backend.status().state.value

    def hand_off_reboot(self) -> None:
        """After the watcher's own first start (``up``): as after a restart."""
        if self.supervisor is not None:
            self.supervisor.hand_off_reboot()

    def shutdown(self) -> None:
        self._supervision_stop.set()
        if self._supervision is not None:
            self._supervision.join(10)
        if self.supervisor is not None and not self._started_by_watcher:
            self.supervisor.release()  # someone else's VM: its reboots stay in place
        if self._started_by_watcher:
            self.backend.down(timeout=self.stop_timeout_s)


def vm_stage_for(config: Config) -> BackendVmStage:
    from watcher.vm import VmSpec, open_backend

    spec = VmSpec.from_config(config)
    return BackendVmStage(open_backend(spec), stop_timeout_s=config.vm.stop_timeout_ms / 1000,
                          host_stage=host_stager(config, spec))  # fmt: skip


def host_stager(config: Config, spec: VmSpec) -> Callable[[], str] | None:
    """``[watch] loop = "host"``: what stages the default target into the stopped VM."""
    if config.watch.loop is not Loop.HOST:
        return None
    from watcher.watch.hoststage import stage_on_host

    def stage() -> str:
        plan_file = config.plans_dir / "default.hcl"
        return stage_on_host(plan_file, spec.arch, spec.disks, spec.cache_disk,
                             spec.nvram).target  # fmt: skip

    return stage


def plan_stage_for(config: Config, key: SigningKey) -> PlanStage:
    from publisher.workspace import PlanPublisher

    return PlanPublisher(config, client_from_config(config.registry), key)


def build_stage_for(config: Config, key: SigningKey | None) -> BuildStage | None:
    """The boot-media stage, or None when the workspace has no recipe."""
    if not config.build.recipe.is_file():
        log.info("no kernel recipe: the kernel stage is off", recipe=str(config.build.recipe))
        return None
    from watcher.watch.media import MediaBuildStage

    return MediaBuildStage(config, key)


def setup_for(config: Config, *, debounce_ms: int | None = None) -> WatchSetup:
    """Stages and settings from the config (the key is decrypted once per process)."""
    from publisher.workspace import load_signing_key

    key = load_signing_key(config)
    window_ms = config.watch.debounce_ms if debounce_ms is None else debounce_ms
    return WatchSetup(
        root=config.root,
        plans_dir=config.plans_dir,
        kernel_dir=config.kernel_dir,
        window=window_ms / 1000,
        rules=IgnoreRules.for_workspace(config.root, config.watch.ignore),
        plan_stage=plan_stage_for(config, key),
        build_stage=build_stage_for(config, key),
        prepare_ahead=config.watch.prepare_ahead,
    )


def reloader(workspace: Path, debounce_ms: int | None) -> Callable[[], WatchSetup]:
    """A SIGHUP handler body: re-read cloudboot.toml and rebuild what depends on it."""

    def reload() -> WatchSetup:
        try:
            return setup_for(load_config(workspace), debounce_ms=debounce_ms)
        except CloudbootError:
            raise
        except Exception as exc:  # e.g. a key that no longer loads: keep the old setup
            raise CloudbootError(f"reload failed: {exc}") from exc

    return reload
