"""The real machine under the agent: mounts, kernel modules, DHCP, the ESP, reboot.

Syscalls go through ctypes (mount(2), umount2(2), reboot(2)); modules are one busybox
``modprobe -a``, DHCP is busybox ``udhcpc`` with our script, and the debug shell is
busybox ``sh``. Only used inside the initramfs; the host tests replace this class, never
the format code behind it.

``start_early`` runs before the agent is imported: it mounts, then loads the modules
and (when the command line names a plan or a metadata URL) runs DHCP, each in a
background thread. Those are waits on other processes, so they overlap with the ~1 s
Python spends importing the agent under TCG; ``load_modules``/``network_up`` then collect
the results. DHCP does not wait for every module: it starts once a NIC appears, so the
recipe lists the NIC driver early (publisher/media/recipe.py, DEFAULT_MODULES). Under TCG
that took DHCP off the agent's path: it used to end ~0.22 s after the agent was ready.
This module is imported first, so it imports little itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from guest.agent.background import Background
from guest.agent.console import Console
from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    from guest.agent import lldp
    from guest.agent.cmdline import Options
    from guest.agent.lease import Lease
    from guest.agent.stage import CacheEsp, EspFiles

MODULES_LISTING = Path("/etc/cloudboot/modules")  # written by publisher.media.initramfs
NETWORK_KNOBS = ("cloudboot.plan", "cloudboot.metadata.url")

BUSYBOX = "/bin/busybox"
UDHCPC_SCRIPT = "/etc/cloud-boot/udhcpc.script"
ESP_MOUNT = Path("/run/cloud-boot/esp")
RB_AUTOBOOT = 0x01234567
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2
_BASIC_MOUNTS = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV),
)
EFIVARS_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


class SystemError_(CloudbootError):
    pass


#: glibc's soname, as in the Debian runtime we pack. Not ``ctypes.util.find_library``: it
#: imports half the stdlib and then finds nothing in an initramfs without ldconfig.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    Path(target).mkdir(parents=True, exist_ok=True)
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None
        ),
        f"mount {fstype} on {target}",
    )


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), 0), f"umount {target}")


def _mounted(target: str) -> bool:
    try:
        return any(line.split()[1] == target for line in open("/proc/mounts"))
    except OSError:
        return False


#: How long the console waits for the early module load (virtio_console) at most.
MODULES_WAIT_S = 20.0


def _on_virtio_console() -> bool:
    try:
        return "console=hvc" in Path("/proc/cmdline").read_text()
    except OSError:
        return False


class GuestSystem:
    def __init__(self) -> None:
        self._prepared = False
        self._modules: Background[list[str]] | None = None
        self._dhcp: Background[tuple[str, subprocess.CompletedProcess[bytes]]] | None = None

    def start_early(self) -> None:
        """Mount, then start modules and (if needed) DHCP in the background (see above)."""
        from guest.agent.cmdline import parse_cmdline

        self.prepare()
        params = parse_cmdline(Path("/proc/cmdline").read_text())
        self._modules = Background(lambda: self._load_modules_now(MODULES_LISTING))
        if any(params.get(k) for k in NETWORK_KNOBS):
            modules = self._modules
            self._dhcp = Background(lambda: self._dhcp_now(modules))

    def prepare(self) -> None:
        if self._prepared:
            return
        self._prepared = True
        for source, target, fstype, flags in _BASIC_MOUNTS:
            if target != "/proc" and _mounted(target):
                continue
            try:
                mount(source, target, fstype, flags)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
        os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")

    def load_modules(self, listing: Path) -> list[str]:
        if self._modules is not None and listing == MODULES_LISTING:
            return self._modules.wait()
        return self._load_modules_now(listing)

    def _load_modules_now(self, listing: Path) -> list[str]:
        """Load the modules the recipe listed (names; modules.dep gives the order).

        One ``busybox modprobe -a`` for all of them: a process start costs tens of
        milliseconds under TCG. Names that are still missing afterwards are reported.
        """
        if not listing.exists():
            return []
        names = [n.strip() for n in listing.read_text().split() if n.strip()]
        if not names:
            return []
        subprocess.run(
            [BUSYBOX, "modprobe", "-a", *names],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        loaded = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
        builtin = Path(f"/lib/modules/{os.uname().release}/modules.builtin")
        known = builtin.read_text() if builtin.exists() else ""
        return [n for n in names if n.replace("-", "_") not in loaded and f"/{n}.ko" not in known]

    def ensure_efivars(self, path: Path) -> None:
        """Mount efivarfs (its module is loaded by now) unless it already is."""
        if _mounted(str(path)):
            return
        try:
            mount("efivarfs", str(path), "efivarfs", EFIVARS_FLAGS)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise SystemError_(
                    f"cannot mount efivarfs: {exc.strerror}", where=str(path)
                ) from exc

    def network_up(self, console: Console) -> Lease | None:
        """DHCP on the first NIC (started early when it could be); the lease comes back
        from the file the udhcpc script writes."""
        from guest.agent.lease import LEASE_FILE, parse_lease

        dhcp, self._dhcp = self._dhcp, None
        iface, proc = dhcp.wait() if dhcp is not None else self._dhcp_now()
        early = f" (in the background: {dhcp.took:.3f}s)" if dhcp is not None else ""
        how = "static ip=" if proc.args[0] == UDHCPC_SCRIPT else "DHCP"
        console.log(f"{how} on {iface}{early}")
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise SystemError_(f"{how} on {iface} failed: {' / '.join(tail)}", where=iface)
        lease_file = Path("/") / LEASE_FILE
        if not lease_file.exists():
            console.warn(f"DHCP on {iface} left no lease in {lease_file}")
            return None
        mac_file = Path("/sys/class/net") / iface / "address"
        mac = mac_file.read_text() if mac_file.exists() else ""
        return parse_lease(lease_file.read_text(), mac=mac, where=str(lease_file))

    def start_lldp(
        self, interface: str, options: Options, arch: str
    ) -> tuple[lldp.Listener | None, list[str]]:
        from guest.agent.lldp import start

        return start(interface, options, arch)

    def _dhcp_now(
        self, modules: Background[list[str]] | None = None
    ) -> tuple[str, subprocess.CompletedProcess[bytes]]:
        from guest.agent.cmdline import parse_cmdline
        from guest.agent.ipconfig import StaticIp, parse_ip
        from guest.agent.lease import LEASE_FILE

        config = parse_ip(parse_cmdline(Path("/proc/cmdline").read_text()).get("ip"))
        (Path("/") / LEASE_FILE).parent.mkdir(parents=True, exist_ok=True)  # the script's
        # Best effort, as `ip link set up` was: a link this could not raise, the
        # script's deconfig raises (it reads the flags); lo is not needed for DHCP.
        with contextlib.suppress(OSError):
            _link_up("lo")  # while the NIC's driver still loads
        iface = _wait_for_nic(modules, want=config.device if config else "")
        with contextlib.suppress(OSError):
            _link_up(iface)  # before udhcpc: its deconfig then starts no process
        if isinstance(config, StaticIp):  # ip= (klibc): the DHCP script, fed the static values
            env = {**os.environ, **config.script_env(iface)}
            for phase in ("deconfig", "bound"):
                proc = subprocess.run([UDHCPC_SCRIPT, phase], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, check=False)  # fmt: skip
            return iface, proc
        proc = subprocess.run(
            [BUSYBOX, "udhcpc", "-i", iface, "-f", "-q", "-n", "-t", "10", "-T", "1",
             "-s", UDHCPC_SCRIPT],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
        return iface, proc

    @contextlib.contextmanager
    def open_esp(self, esp: CacheEsp) -> Iterator[EspFiles]:
        from guest.agent.stage import MountedEsp

        mount(str(esp.device.node), str(ESP_MOUNT), "vfat", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try:
            yield MountedEsp(ESP_MOUNT)
        finally:
            os.sync()
            _libc.umount2(str(ESP_MOUNT).encode(), 0)

    def finish(self) -> None:
        os.sync()
        _check(_libc.reboot(RB_AUTOBOOT), "reboot")

    def console_streams(self) -> list[TextIO]:
        """The consoles to log to. With ``console=hvc0`` (vfkit's virtio console) the
        console exists only once ``virtio_console`` is loaded: wait for the module load
        started early (a second or so) rather than open a /dev/console with no device."""
        if self._modules is not None and _on_virtio_console():
            self._modules.join(MODULES_WAIT_S)
        streams: list[TextIO] = []
        for path in ("/dev/console",):
            with contextlib.suppress(OSError):
                streams.append(open(path, "w"))  # noqa: SIM115 - kept for the whole boot
        return streams

    def console_fds(self) -> list[int]:
        fds = []
        for path in ("/dev/console", "/dev/tty1"):
            with contextlib.suppress(OSError):
                fds.append(os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK))
        return fds

    def wait_forever(self, debug: bool) -> None:
        if debug and os.path.exists(BUSYBOX):  # the applet links a shell user expects
            subprocess.run([BUSYBOX, "--install", "-s", "/bin"], check=False)
        while True:
            if debug and os.path.exists(BUSYBOX):
                subprocess.run([BUSYBOX, "setsid", "-c", BUSYBOX, "sh"], check=False)
            else:
                time.sleep(3600)


#: How long a NIC may take to appear once every module has loaded.
NIC_WAIT_S = 10.0
NIC_POLL_S = 0.02
NET_CLASS = Path("/sys/class/net")
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _wait_for_nic(
    modules: Background[list[str]] | None, want: str = "", net: Path = NET_CLASS
) -> str:
    """The first NIC (or ``want``) as soon as it appears, while the modules still load;
    ``NIC_WAIT_S`` counts from when they are all loaded."""
    deadline: float | None = None
    while deadline is None or time.monotonic() < deadline:
        names = sorted(n for n in os.listdir(net) if n != "lo")
        names = [n for n in names if n == want] if want else names
        if names:
            return names[0]
        if deadline is None and (modules is None or modules.done()):
            deadline = time.monotonic() + NIC_WAIT_S
        time.sleep(NIC_POLL_S)
    raise SystemError_("no network interface appeared (virtio_net not loaded?)", where=str(net))


def _link_up(name: str) -> None:
    """``ip link set NAME up`` without a process: SIOCGIFFLAGS/SIOCSIFFLAGS (netdevice(7))."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
