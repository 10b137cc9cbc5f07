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

Two loaders. kexec_file_load(2) always hashes every segment with SHA-256 twice (when
loading, and in purgatory before the jump) and checks the kernel's signature: under TCG
that is ~2.5 s of a ~3.7 s exit. Where nothing requires the kernel to check what it
starts (Secure Boot off, no lockdown), the agent first uses kexec-tools' ``kexec``
(packed into the initramfs) on the older kexec_load(2) with ``--no-checks``: the same
target, loaded by userland, no hashing. The agent has already bound those bytes to the
signed plan (docs/trust-model.md); the hashes only guard against memory corruption
between load and jump. Under Secure Boot or lockdown, and whenever that loader fails,
kexec_file_load is used, as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from guest.agent.background import Background
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
#: kexec-tools' loader in the initramfs (publisher/media/guestpack.py, KEXEC_TOOL there).
KEXEC_TOOL = Path("/usr/lib/cloudboot/kexec")
#: Where the kernel says whether lockdown is on ("[none] integrity confidentiality").
LOCKDOWN = Path("/sys/kernel/security/lockdown")
#: Bounds on the userland loader: it reads the images and /sys, nothing slow.
TOOL_TIMEOUT_S = 60
TOOL_ERROR_CHARS = 400
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

    def load(self, staged: Staged) -> str:
        """Load the target; returns which loader did it (for the log)."""
        ...

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


def unchecked_allowed(secure_boot: bool, lockdown: Path = LOCKDOWN) -> bool:
    """Whether the kernel may start a target it did not hash: Secure Boot off and no
    lockdown (an unreadable lockdown file, as without securityfs, means none is set)."""
    if secure_boot:
        return False
    try:
        state = lockdown.read_text()
    except OSError:
        return True
    return "[none]" in state


class Kexec:
    """kexec(8) or kexec_file_load(2), and reboot(2) through libc; ``finish`` is the
    plain reboot. ``tool``: the userland loader, when :func:`unchecked_allowed`."""

    def __init__(
        self, arch: Arch, finish: Callable[[], None], libc: ctypes.CDLL | None = None,
        *, tool: Path | None = None,
    ) -> None:  # fmt: skip
        self.arch = arch
        self._finish = finish
        self.libc = libc or ctypes.CDLL("libc.so.6", use_errno=True)
        self.tool = tool
        self.fallback: str | None = None  # why the userland loader was not used

    @classmethod
    def for_guest(cls, arch: Arch, finish: Callable[[], None], efivars: Path) -> Kexec:
        """The guest's edge: the userland loader only where nothing requires the kernel's
        checks (Secure Boot off, no lockdown); efivarfs must be mounted."""
        from guest.agent.secureboot import secure_boot_on
        from guest.contract.efi.efivarfs import EfiVarStore

        try:
            secure_boot = secure_boot_on(EfiVarStore(efivars))
        except CloudbootError:
            secure_boot = True  # unknown: let the kernel check
        return cls(arch, finish, tool=KEXEC_TOOL if unchecked_allowed(secure_boot) else None)

    def load(self, staged: Staged) -> str:
        if self.tool is not None and self.tool.exists():
            try:
                self._load_unchecked(self.tool, staged)
                return "kexec_load, no segment hashing"
            except KexecRefused as exc:
                self.fallback = str(exc)
        self._load_file(staged)
        return "kexec_file_load" + (
            f"; kexec_load failed: {self.fallback}" if self.fallback else ""
        )

    def _load_unchecked(self, tool: Path, staged: Staged) -> None:
        """kexec -l --kexec-syscall --no-checks, the images as memfds it inherits."""
        fds: list[int] = []
        try:
            fds.append(_memfd("cloudboot-kernel", staged.kernel))
            argv = [str(tool), "--load", "--kexec-syscall", "--no-checks",
                    f"--command-line={staged.cmdline}"]  # fmt: skip
            if staged.initrd is not None:
                fds.append(_memfd("cloudboot-initrd", staged.initrd))
                argv.append(f"--initrd=/proc/self/fd/{fds[1]}")
            argv.append(f"/proc/self/fd/{fds[0]}")
            try:
                done = subprocess.run(argv, pass_fds=fds, capture_output=True,
                                      timeout=TOOL_TIMEOUT_S, check=False)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise KexecRefused(f"{tool.name}: {exc}") from exc
            if done.returncode != 0:
                said = done.stderr.decode(errors="replace").strip()[-TOOL_ERROR_CHARS:]
                raise KexecRefused(f"{tool.name} exited {done.returncode}: {said}")
        finally:
            for fd in fds:
                os.close(fd)

    def _load_file(self, staged: Staged) -> None:
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


class Preloaded:
    """A leaving edge whose load was started early, in a thread: the agent starts it once
    the target's bytes and command line are known, and kexec(8) (or the kernel, for
    kexec_file_load) then works on the other CPU while the agent writes the ESP and
    NVRAM; ``leave`` takes the result. Staging still comes first for the jump, which waits
    for both. A failed load surfaces in ``load`` as it would have without the head start.
    """

    def __init__(self, edge: Leaving, staged: Staged) -> None:
        self.edge = edge
        self.staged = staged
        self._load = Background(lambda: edge.load(staged))

    def load(self, staged: Staged) -> str:
        if staged is not self.staged:  # not what was preloaded: load it now
            self._load.join(None)
            return self.edge.load(staged)
        return self._load.wait()

    def jump(self) -> None:
        self.edge.jump()

    def reboot(self) -> None:
        self.edge.reboot()


def leave(console: Console, exit_value: str, staged: Staged | None, edge: Leaving) -> int:
    """Leave as ``cloudboot.exit`` says; returns 1 after a FATAL (the caller waits)."""
    modes = parse_exit(exit_value)
    if modes[0] == "kexec" and staged is not None:
        try:
            how = edge.load(staged)
            console.log(f"kexec: target loaded ({how}); starting it (no firmware pass)")
            edge.jump()
        except KexecRefused as exc:
            if "reboot" not in modes:
                console.fatal(str(exc), EXIT_HINT)
                return 1
            console.warn(f"{exc}; rebooting into Boot0001 instead (cloudboot.exit={exit_value})")
    edge.reboot()
    return 0
