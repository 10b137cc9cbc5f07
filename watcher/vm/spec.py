"""One VM description, taken from the workspace config's [vm] and [build] sections.

Both backends (vfkit, QEMU) build their command lines from this one frozen value, so
the two cannot drift apart on which disks are attached, in which order, or where the
NVRAM store and serial log live. Everything a later CLI call needs to find a running
VM again (pidfile, control socket) is derived from ``state_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.ociref import parse_ref
from publisher.config import Accel, Backend, Config


class VmError(CloudbootError):
    """A VM operation that cannot be done (missing disk, VM in the wrong state ...)."""


@dataclass(frozen=True)
class Disk:
    """One virtio-blk disk in attach order; ``config_key`` names where it came from."""

    path: Path
    readonly: bool
    config_key: str


def _loopback_services(registry_url: str) -> tuple[tuple[str, int], ...]:
    """The registry's (host, port) when it listens on the host's loopback (the embedded one)."""
    ref = parse_ref(f"{registry_url}/x")
    host, _, port = ref.registry.rpartition(":")
    if not ref.insecure_default or not port.isdigit():
        return ()
    host = host.strip("[]")
    return (("127.0.0.1" if host == "localhost" else host, int(port)),)


#: sun_path is 108 bytes on Linux and 104 on macOS (NUL included).
MAX_SOCKET_PATH = 103


@dataclass(frozen=True)
class VmSpec:
    arch: Arch
    cpus: int
    memory_mib: int
    iso: Path
    cache_disk: Path
    disks: tuple[Path, ...]
    mac: str
    gui: bool
    nvram: Path
    serial_log: Path
    state_dir: Path
    backend: Backend  # never AUTO: resolved for this host
    accel: Accel = Accel.AUTO
    #: (host, port) of services on the host's loopback the guest must reach at its gateway,
    #: on the same port (the registry). QEMU's user network does that by itself; vfkit's
    #: NAT does not, so the vfkit backend forwards them from the bridge address while the
    #: VM runs.
    host_services: tuple[tuple[str, int], ...] = ()
    #: The extra disks copy-on-write (QEMU ``snapshot=on``): a canary's writes vanish
    #: with it, and canaries booting side by side share the workspace's disks safely.
    scratch_disks: bool = False

    @classmethod
    def from_config(cls, config: Config) -> VmSpec:
        """Resolve defaults (backend per host, paths under state_dir); the config has
        already checked every value (publisher.config's parse hooks)."""
        vm = config.vm
        state_dir = vm.state_dir
        return cls(
            arch=config.vm_arch(),
            cpus=vm.cpus,
            memory_mib=vm.memory_mib,
            iso=config.build.iso,
            cache_disk=config.build.cache_disk,
            disks=tuple(vm.disks),
            mac=vm.mac,
            gui=vm.gui,
            nvram=vm.nvram or state_dir / "nvram.fd",
            serial_log=vm.serial_log or state_dir / "serial.log",
            state_dir=state_dir,
            backend=vm.backend.resolve(),
            accel=vm.accel,
            host_services=_loopback_services(config.registry.url),
        )

    @property
    def attached_disks(self) -> list[Disk]:
        """boot.iso (read-only) first, then the cache disk, then the extra disks."""
        return [
            Disk(self.iso, True, "[build].iso"),
            Disk(self.cache_disk, False, "[build].cache_disk"),
            *(Disk(p, False, f"[vm].disks[{i}]") for i, p in enumerate(self.disks)),
        ]

    @property
    def pidfile(self) -> Path:
        return self.state_dir / f"{self.backend.value}.pid"

    @property
    def control_socket(self) -> Path:
        """QMP socket (QEMU) or vfkit's REST socket."""
        name = "qmp.sock" if self.backend is Backend.QEMU else "rest.sock"
        return self.state_dir / name

    @property
    def record_file(self) -> Path:
        return self.state_dir / "vm.json"

    @property
    def process_log(self) -> Path:
        """The VM process's own stdout/stderr (not the guest's serial console)."""
        return self.state_dir / f"{self.backend.value}.log"

    def check_files(self) -> None:
        """Fail before launching when a disk is missing or a socket path is too long."""
        for disk in self.attached_disks:
            if not disk.path.is_file():
                hint = " (run `cloudboot build`)" if disk.config_key.startswith("[build]") else ""
                raise VmError(f"{disk.config_key}: disk not found: {disk.path}{hint}")
        sock = str(self.control_socket)
        if len(sock.encode()) > MAX_SOCKET_PATH:
            raise VmError(
                f"[vm].state_dir: control socket path is {len(sock)} bytes, over the "
                f"{MAX_SOCKET_PATH}-byte unix socket limit: {sock}"
            )
