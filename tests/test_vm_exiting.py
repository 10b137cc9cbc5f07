"""A VM process that is still exiting holds its disk images' locks: the next launch waits.

Found by CI: a supervisor relaunch right after a SIGKILL failed with QEMU's
``Failed to get "write" lock`` on the cache disk. The killed process had already lost its
memory (no argv, so it read as stopped) but had not yet closed its files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from publisher.config import Backend
from tests.helpers import make_spec
from watcher.vm import backend as backend_module, open_backend
from watcher.vm.state import exiting


class Launched(Exception):
    pass


def test_a_launch_waits_while_the_last_process_is_still_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, Backend.QEMU)
    spec.state_dir.mkdir(parents=True)
    spec.pidfile.write_text("4242\n")  # the last VM's pid, as QEMU's -pidfile left it
    calls: list[tuple[object, ...]] = []

    def still_exiting(pid: int) -> bool:
        calls.append(("exiting", pid))
        return len(calls) < 4  # three polls in the window, then gone

    def launch(argv: list[str], log_file: Path) -> None:
        calls.append(("launch",))
        raise Launched

    monkeypatch.setattr(backend_module, "exiting", still_exiting)
    monkeypatch.setattr(backend_module, "launch", launch)
    with pytest.raises(Launched):
        open_backend(spec).up()
    assert calls == [("exiting", 4242)] * 4 + [("launch",)]


def test_exiting_is_only_the_window_between_memory_and_files() -> None:
    """A live process and a zombie (files closed) are not exiting, nor is a pid nobody has."""
    code = "import sys, time; print('ready', flush=True); time.sleep(30)"
    live = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert live.stdout is not None and live.stdout.readline() == b"ready\n"  # past its exec
    try:
        assert not exiting(live.pid)
    finally:
        live.kill()
        live.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not exiting(zombie.pid)
    zombie.wait()
    assert not exiting(zombie.pid)
