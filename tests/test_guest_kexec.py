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
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guest.agent.cmdline import CmdlineError
from guest.agent.console import Console
from guest.agent.kexec import (
    EXIT_HINT,
    Kexec,
    KexecRefused,
    Preloaded,
    Staged,
    leave,
    parse_exit,
    unchecked_allowed,
)
from guest.contract.arch import Arch

STAGED = Staged(b"MZ not a kernel" * 100, b"initrd", "console=ttyS0 root=LABEL=x")


@dataclass
class Edge:
    """The machine edge of leaving: records what the agent asked for."""

    refuse: str | None = None
    calls: list[str] = field(default_factory=list)

    def load(self, staged: Staged) -> str:
        self.calls.append("load")
        if self.refuse:
            raise KexecRefused(self.refuse)
        return "recorded"

    def jump(self) -> None:
        self.calls.append("jump")

    def reboot(self) -> None:
        self.calls.append("reboot")


def run(exit_value: str, edge: Edge | Preloaded) -> tuple[int, str]:
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


@pytest.mark.parametrize(
    ("secure_boot", "lockdown", "allowed"),
    [(True, "[none] integrity confidentiality", False),
     (False, "[none] integrity confidentiality", True),
     (False, "none [integrity] confidentiality", False),
     (False, None, True)],  # no securityfs: lockdown was never set
)  # fmt: skip
def test_the_unhashed_loader_only_where_nothing_requires_checks(
    tmp_path: Path, secure_boot: bool, lockdown: str | None, allowed: bool
) -> None:
    path = tmp_path / "lockdown"
    if lockdown is not None:
        path.write_text(lockdown + "\n")
    assert unchecked_allowed(secure_boot, path) is allowed


def _tool(tmp_path: Path, status: int) -> Path:
    """A stand-in for kexec(8) that records its argv and the bytes behind its fd paths."""
    tool = tmp_path / "kexec"
    tool.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path}/argv\n'
        'for a in "$@"; do case "$a" in --initrd=*) cat "${a#--initrd=}" > '
        f'{tmp_path}/initrd;; /proc/*) cat "$a" > {tmp_path}/kernel;; esac; done\n'
        f"echo 'Could not find a free area of memory' >&2; exit {status}\n"
    )
    tool.chmod(0o755)
    return tool


def test_the_userland_loader_gets_the_images_and_skips_the_hashing(tmp_path: Path) -> None:
    def never() -> None:
        raise AssertionError("must not reboot")

    edge = Kexec(Arch.host(), never, tool=_tool(tmp_path, 0))
    assert edge.load(STAGED) == "kexec_load, no segment hashing"
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:4] == ["--load", "--kexec-syscall", "--no-checks",
                        "--command-line=console=ttyS0 root=LABEL=x"]  # fmt: skip
    assert (tmp_path / "kernel").read_bytes() == STAGED.kernel
    assert (tmp_path / "initrd").read_bytes() == STAGED.initrd


def test_a_failing_userland_loader_falls_back_to_kexec_file_load(tmp_path: Path) -> None:
    def never() -> None:
        raise AssertionError("must not reboot")

    edge = Kexec(Arch.host(), never, tool=_tool(tmp_path, 1))
    with pytest.raises(KexecRefused, match=r"\((ENOEXEC|EPERM|ENOSYS)\)"):
        edge.load(STAGED)  # kexec_file_load refuses these bytes, as above
    assert edge.fallback == "kexec exited 1: Could not find a free area of memory"


def test_a_preloaded_load_runs_beside_the_agent_and_leave_takes_its_result() -> None:
    """main() starts the load before the ESP and NVRAM writes; leave() waits for it and
    jumps, and a refusal found early is reported exactly as a late one."""
    started, release = threading.Event(), threading.Event()

    class Slow(Edge):
        def load(self, staged: Staged) -> str:
            started.set()
            release.wait(10)
            return super().load(staged)

    edge = Slow()
    preloaded = Preloaded(edge, STAGED)
    assert started.wait(10)  # loading while the caller goes on (the writes)
    assert edge.calls == []
    release.set()
    status, text = run("kexec", preloaded)
    assert status == 0 and edge.calls[:2] == ["load", "jump"]  # a real jump never returns
    assert "kexec: target loaded (recorded)" in text

    why = "the kernel refused kexec: lockdown under Secure Boot (EKEYREJECTED)"
    refused = Edge(refuse=why)
    status, text = run("kexec,reboot", Preloaded(refused, STAGED))
    assert status == 0 and refused.calls == ["load", "reboot"]
    assert f"WARNING: {why}; rebooting into Boot0001 instead" in text
