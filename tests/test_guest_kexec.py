"""cloudboot.exit: reboot, kexec, kexec,reboot.

The success path (the target kernel starts without a firmware pass) runs in QEMU
(tests/e2e/test_fast_loops.py). Here: the parsing, what the agent says and does when the
kernel refuses (the machine edge is a recorder, as the agent harness swaps reboot), and
the real kexec_file_load(2) called through ctypes on this host with bytes that are no
kernel, which any kernel refuses (ENOEXEC, or EPERM without CAP_SYS_BOOT), so nothing is
ever loaded here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest

from guest.agent.cmdline import CmdlineError
from guest.agent.console import Console
from guest.agent.kexec import (
    EXIT_HINT,
    Kexec,
    KexecRefused,
    Staged,
    leave,
    parse_exit,
)
from guest.contract.arch import Arch

STAGED = Staged(b"MZ not a kernel" * 100, b"initrd", "console=ttyS0 root=LABEL=x")


@dataclass
class Edge:
    """The machine edge of leaving: records what the agent asked for."""

    refuse: str | None = None
    calls: list[str] = field(default_factory=list)

    def load(self, staged: Staged) -> None:
        self.calls.append("load")
        if self.refuse:
            raise KexecRefused(self.refuse)

    def jump(self) -> None:
        self.calls.append("jump")

    def reboot(self) -> None:
        self.calls.append("reboot")


def run(exit_value: str, edge: Edge) -> tuple[int, str]:
    out = io.StringIO()
    status = leave(Console([out]), exit_value, STAGED, edge)
    return status, out.getvalue()


@pytest.mark.parametrize(
    ("value", "modes"),
    [("reboot", ("reboot",)), ("kexec", ("kexec",)), ("kexec,reboot", ("kexec", "reboot"))],
)
def test_exit_modes_parse(value: str, modes: tuple[str, ...]) -> None:
    assert parse_exit(value) == modes


@pytest.mark.parametrize("value", ["", "kexe", "kexec,kexec", "reboot,poweroff"])
def test_a_bad_exit_names_the_key(value: str) -> None:
    with pytest.raises(CmdlineError, match=r"cloudboot\.exit=.*expected reboot, kexec"):
        parse_exit(value)


def test_reboot_never_tries_kexec() -> None:
    edge = Edge()
    assert run("reboot", edge) == (0, "")
    assert edge.calls == ["reboot"]


def test_kexec_loads_and_jumps_without_a_reboot() -> None:
    edge = Edge()
    status, text = run("kexec", edge)
    assert status == 0 and edge.calls[:2] == ["load", "jump"]
    assert "kexec: target loaded" in text


def test_refused_kexec_falls_back_only_when_asked() -> None:
    why = "the kernel refused kexec: lockdown under Secure Boot (EKEYREJECTED)"
    edge = Edge(refuse=why)
    status, text = run("kexec,reboot", edge)
    assert status == 0 and edge.calls == ["load", "reboot"]
    assert f"WARNING: {why}; rebooting into Boot0001 instead" in text
    edge = Edge(refuse=why)
    status, text = run("kexec", edge)
    assert status == 1 and edge.calls == ["load"]  # no reboot: the FATAL stays on screen
    assert text.splitlines() == [f"FATAL: {why}", f"hint: {EXIT_HINT}"]


def test_the_real_syscall_refuses_bytes_that_are_no_kernel() -> None:
    def never() -> None:
        raise AssertionError("must not reboot")

    with pytest.raises(KexecRefused, match=r"kexec.*\((ENOEXEC|EPERM|ENOSYS)\)"):
        Kexec(Arch.host(), never).load(STAGED)
