"""The sd_notify watchdog protocol when the watcher hangs, against a real notify socket.

systemd restarts a ``WatchdogSec`` service whose pings stop, so the property that matters
is: pings flow while the watcher works or idles, stop while one pipeline run hangs (here:
a publish stuck on a gate, as on a half-open connection), and flow again once it ends.
The listener is a bound AF_UNIX datagram socket, the transport systemd uses; no real
systemd runs here (see the report: a systemd VM was not built in this session).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.ignore import IgnoreRules
from tests.helpers import FilePlanStage, make_workspace, wait_for
from watcher.watch.daemon import WatchDaemon, WatchSetup
from watcher.watch.sdnotify import Notifier
from watcher.watch.status import StatusBook

WATCHDOG_USEC = 100_000  # pings every 50 ms
HANG_AFTER = 1.0


class Listener:
    """The manager's side: collects datagrams with the time each arrived."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.pings: list[float] = []
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                for line in self.sock.recv(4096).decode().splitlines():
                    self.lines.append(line)
                    if line == "WATCHDOG=1":
                        self.pings.append(time.monotonic())

    def pings_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.pings)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    lst = Listener(tmp_path / "notify.sock")
    yield lst
    lst.close()


def test_watchdog_pings_stop_while_a_run_hangs_and_resume_after(
    tmp_path: Path, listener: Listener
) -> None:
    root = make_workspace(tmp_path / "ws")
    stage = FilePlanStage(tmp_path / "out")
    (tmp_path / "out").mkdir()
    setup = WatchSetup(
        root=root,
        plans_dir=root / "plans",
        kernel_dir=root / "kernel",
        window=0.05,
        rules=IgnoreRules.for_workspace(root),
        plan_stage=stage,
        build_stage=None,
        prepare_ahead=False,
    )
    status = StatusBook(root / ".cloudboot" / "status.json", watching=["plans/"])
    notifier = Notifier(socket_path=str(tmp_path / "notify.sock"))
    daemon = WatchDaemon(setup, status, notifier=notifier, initial_run=False, hang_after=HANG_AFTER)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: status.data["state"] == "idle", what="watcher idle")
        wait_for(lambda: "READY=1" in listener.lines, what="READY=1")
        t0 = time.monotonic()
        time.sleep(0.5)
        assert listener.pings_between(t0, time.monotonic()) >= 3  # idle: pinging

        stage.gate = threading.Event()  # the next publish hangs until released
        stage.entered.clear()
        (root / "plans" / "demo.hcl").write_text('default_target = "b"\n')
        assert stage.entered.wait(20)
        entered = time.monotonic()
        time.sleep(0.5)
        assert listener.pings_between(entered, time.monotonic()) >= 3  # busy, not hung yet
        time.sleep(HANG_AFTER + 0.2)
        quiet_from = time.monotonic()
        time.sleep(1.0)  # twenty ping intervals
        assert listener.pings_between(quiet_from, time.monotonic()) == 0  # hung: silent
        assert thread.is_alive()

        stage.gate.set()  # the run ends: the watcher is healthy again
        released = time.monotonic()
        wait_for(lambda: listener.pings_between(released, time.monotonic()) >= 3, what="pings")
        assert (tmp_path / "out" / "demo").read_text() == 'default_target = "b"\n'
    finally:
        if stage.gate is not None:
            stage.gate.set()
        daemon.request_stop()
        thread.join(30)
    assert not thread.is_alive()
    assert "STOPPING=1" in listener.lines
