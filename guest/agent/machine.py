"""What the agent needs from the machine: where things are, and what it can do.

``Paths`` roots every file the agent reads or writes, so a host test runs the whole pass
in a temporary tree; ``System`` is the edge the agent cannot do in-process (mounts,
modules, DHCP, the ESP mount, reboot): ``guest.agent.sysguest`` in the guest, a small stand-in
in the host tests.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from guest.agent.cmdline import Options
    from guest.agent.console import Console
    from guest.agent.lease import Lease
    from guest.agent.lldp import Listener
    from guest.agent.stage import CacheEsp, EspFiles


@dataclass(frozen=True)
class Paths:
    """Where the agent finds things; ``root`` is ``/`` in the guest, a tmp dir in tests."""

    root: Path = Path("/")

    @property
    def cmdline(self) -> Path:
        return self.root / "proc/cmdline"

    @property
    def cosign_pub(self) -> Path:
        return self.root / "etc/cosign.pub"

    @property
    def embedded_plan(self) -> Path:
        return self.root / "etc/cloud-boot/plan.hcl"

    @property
    def modules(self) -> Path:
        return self.root / "etc/cloudboot/modules"  # written by publisher.media.initramfs

    @property
    def resolv_conf(self) -> Path:
        return self.root / "etc/resolv.conf"

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def efivars(self) -> Path:
        return self.root / "sys/firmware/efi/efivars"


class System(Protocol):
    def prepare(self) -> None: ...
    def load_modules(self, listing: Path) -> list[str]: ...
    def ensure_efivars(self, path: Path) -> None: ...
    def network_up(self, console: Console) -> Lease | None: ...
    def start_lldp(
        self, interface: str, options: Options, arch: str
    ) -> tuple[Listener | None, list[str]]: ...
    def open_esp(self, esp: CacheEsp) -> AbstractContextManager[EspFiles]: ...
    def finish(self) -> None: ...
    def wait_forever(self, debug: bool) -> None: ...
    def console_fds(self) -> list[int]: ...
