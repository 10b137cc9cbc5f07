"""``cloudboot.exit``: how the agent leaves once the target is staged.

- ``reboot`` (the default; the seed's Path C): reboot(2); the firmware boots Boot0001.
- ``kexec`` (upstream's default, Path A): kexec_file_load(2) the target's kernel with its
  initrd and command line, then reboot(LINUX_REBOOT_CMD_KEXEC) into it: no second
  firmware pass. VZ traps kexec, so vfkit guests use ``reboot`` (docs/wire-formats.md §6).
- ``kexec,reboot``: kexec, and when the kernel refuses it (lockdown under Secure Boot
  without a signature the kernel trusts, or a kernel without kexec_file_load, as Debian's
  arm64 cloud kernel) say why and reboot instead.

Staging (the ESP files and Boot0001) happens before either, so the reboot fallback boots
the same target, and a later power cycle too. The syscall goes through ctypes like the
agent's others (mount, reboot); the kernel and initrd reach it as memfds.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from guest.agent.cmdline import parse_exit
from guest.agent.console import Console
from guest.agent.stage import FileData, copy_into
from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError

#: kexec_file_load(2)'s number per arch (include/uapi/asm-generic/unistd.h on arm64).
SYSCALL_KEXEC_FILE_LOAD = {Arch.X86_64: 320, Arch.AARCH64: 294}
LINUX_REBOOT_CMD_KEXEC = 0x45584543
KEXEC_FILE_NO_INITRAMFS = 0x4
#: Why the kernel says no, in the words a user can act on.
REFUSALS = {
    errno.EPERM: "the kernel refused kexec (lockdown under Secure Boot, or no CAP_SYS_BOOT)",
    errno.EKEYREJECTED: "the kernel refused kexec: lockdown under Secure Boot and the target"
    " kernel is not signed by a key it trusts",
    errno.EBADMSG: "the kernel refused kexec: the target kernel's signature is malformed",
    errno.ENOSYS: "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE is off)",
    errno.ENOEXEC: "the target kernel is not an image this kernel can kexec",
}
EXIT_HINT = (
    "add ',reboot' (cloudboot.exit=kexec,reboot) to fall back to a firmware reboot, or"
    " boot with cloudboot.exit=reboot; Boot0001 is staged either way"
)


class KexecRefused(CloudbootError):
    pass


@dataclass(frozen=True)
class Staged:
    """What Boot0001 boots, kept for a kexec into the same thing."""

    kernel: FileData
    initrd: FileData | None
    cmdline: str


class Leaving(Protocol):
    """The machine edge of leaving (``Kexec`` in the guest)."""

    def load(self, staged: Staged) -> None: ...
    def jump(self) -> None: ...
    def reboot(self) -> None: ...


def _memfd(name: str, data: FileData) -> int:
    fd = os.memfd_create(name, 0)
    try:
        copy_into(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Kexec:
    """kexec_file_load(2) and reboot(2) through libc; ``finish`` is the plain reboot."""

    def __init__(
        self, arch: Arch, finish: Callable[[], None], libc: ctypes.CDLL | None = None
    ) -> None:
        self.arch = arch
        self._finish = finish
        self.libc = libc or ctypes.CDLL("libc.so.6", use_errno=True)

    def load(self, staged: Staged) -> None:
        fds: list[int] = []
        try:
            fds.append(_memfd("cloudboot-kernel", staged.kernel))
            flags = 0
            if staged.initrd is None:
                initrd_fd, flags = -1, KEXEC_FILE_NO_INITRAMFS
            else:
                fds.append(initrd_fd := _memfd("cloudboot-initrd", staged.initrd))
            cmdline = staged.cmdline.encode() + b"\0"
            result = self.libc.syscall(
                ctypes.c_long(SYSCALL_KEXEC_FILE_LOAD[self.arch]), ctypes.c_int(fds[0]),
                ctypes.c_int(initrd_fd), ctypes.c_ulong(len(cmdline)),
                ctypes.c_char_p(cmdline), ctypes.c_ulong(flags),
            )  # fmt: skip
            if result != 0:
                err = ctypes.get_errno()
                why = REFUSALS.get(err, "kexec_file_load failed")
                raise KexecRefused(f"{why} ({errno.errorcode.get(err, err)})")
        finally:
            for fd in fds:
                os.close(fd)

    def jump(self) -> None:
        os.sync()
        self.libc.reboot(LINUX_REBOOT_CMD_KEXEC)  # returns only on failure
        err = ctypes.get_errno()
        raise KexecRefused(f"reboot(LINUX_REBOOT_CMD_KEXEC) failed ({os.strerror(err)})")

    def reboot(self) -> None:
        self._finish()


def leave(console: Console, exit_value: str, staged: Staged | None, edge: Leaving) -> int:
    """Leave as ``cloudboot.exit`` says; returns 1 after a FATAL (the caller waits)."""
    modes = parse_exit(exit_value)
    if modes[0] == "kexec" and staged is not None:
        try:
            edge.load(staged)
            console.log("kexec: target loaded; starting it (no firmware pass)")
            edge.jump()
        except KexecRefused as exc:
            if "reboot" not in modes:
                console.fatal(str(exc), EXIT_HINT)
                return 1
            console.warn(f"{exc}; rebooting into Boot0001 instead (cloudboot.exit={exit_value})")
    edge.reboot()
    return 0
