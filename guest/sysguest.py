"""The real machine under the agent: mounts, kernel modules, DHCP, the ESP, reboot.

Syscalls go through ctypes (mount(2), umount2(2), finit_module(2), reboot(2)) so the
common path starts no processes; DHCP is busybox ``udhcpc`` with our script, and the
debug shell is busybox ``sh``. Only used inside the initramfs; the host tests replace
this class, never the format code behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from guest.console import Console
from guest.errors import CloudbootError
from guest.lease import LEASE_FILE, Lease, parse_lease
from guest.stage import CacheEsp, EspFiles, MountedEsp

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


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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


def _mounted(target: str) -> bool:
    try:
        return any(line.split()[1] == target for line in open("/proc/mounts"))
    except OSError:
        return False


class GuestSystem:
    def prepare(self) -> None:
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
        """DHCP on the first NIC; the lease comes back from the udhcpc script's file."""
        subprocess.run([BUSYBOX, "ip", "link", "set", "lo", "up"], check=False)
        iface = self._wait_for_nic()
        console.log(f"DHCP on {iface}")
        proc = subprocess.run(
            [
                BUSYBOX,
                "udhcpc",
                "-i",
                iface,
                "-f",
                "-q",
                "-n",
                "-t",
                "10",
                "-T",
                "1",
                "-s",
                UDHCPC_SCRIPT,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise SystemError_(f"DHCP on {iface} failed: {' / '.join(tail)}", where=iface)
        lease_file = Path("/") / LEASE_FILE
        if not lease_file.exists():
            console.warn(f"DHCP on {iface} left no lease in {lease_file}")
            return None
        mac_file = Path("/sys/class/net") / iface / "address"
        mac = mac_file.read_text() if mac_file.exists() else ""
        return parse_lease(lease_file.read_text(), mac=mac, where=str(lease_file))

    @staticmethod
    def _wait_for_nic(timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
            if names:
                return names[0]
            time.sleep(0.05)
        raise SystemError_(
            "no network interface appeared (virtio_net not loaded?)", where="/sys/class/net"
        )

    @contextlib.contextmanager
    def open_esp(self, esp: CacheEsp) -> Iterator[EspFiles]:
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
