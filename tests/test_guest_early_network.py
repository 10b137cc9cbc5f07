"""The guest's early network: DHCP starts as soon as a NIC appears, not after every
module has loaded, and the links go up without a process (guest/agent/sysguest.py).

The NIC wait runs against a directory standing in for /sys/class/net; the link is raised
for real, by the same ioctl the guest makes, in a new network namespace where ``lo`` is
down."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from guest.agent import sysguest
from guest.agent.background import Background
from guest.agent.sysguest import SystemError_, _wait_for_nic

REPO = Path(__file__).resolve().parents[1]


def _appears_later(path: Path, after: float) -> None:
    def make() -> None:
        time.sleep(after)
        path.mkdir()

    threading.Thread(target=make, daemon=True).start()


def test_the_nic_is_taken_while_the_other_modules_still_load(tmp_path: Path) -> None:
    loading = threading.Event()
    modules = Background(lambda: loading.wait(30) and [])  # the module load, not done
    _appears_later(tmp_path / "eth0", 0.1)
    (tmp_path / "lo").mkdir()
    assert _wait_for_nic(modules, net=tmp_path) == "eth0"
    assert not modules.done()  # taken before the modules ended
    loading.set()


def test_the_wanted_nic_is_waited_for(tmp_path: Path) -> None:
    (tmp_path / "eth0").mkdir()
    _appears_later(tmp_path / "eth1", 0.1)
    assert _wait_for_nic(None, want="eth1", net=tmp_path) == "eth1"


def test_no_nic_fails_only_after_the_modules_and_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysguest, "NIC_WAIT_S", 0.2)
    modules = Background(lambda: time.sleep(0.3) or [])
    start = time.monotonic()
    with pytest.raises(SystemError_, match="no network interface appeared") as err:
        _wait_for_nic(modules, net=tmp_path)
    assert time.monotonic() - start >= 0.5  # the modules' 0.3 s, then the 0.2 s wait
    assert err.value.where == str(tmp_path)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_link_up_raises_a_down_link(tmp_path: Path) -> None:
    probe = (
        "from pathlib import Path\n"
        "from guest.agent.sysguest import _link_up\n"
        "flags = lambda: int(Path('/sys/class/net/lo/flags').read_text(), 16)\n"
        "before = flags()\n"
        "_link_up('lo')\n"
        "_link_up('lo')\n"  # already up: nothing to do, no error
        "print(before & 1, flags() & 1)\n"
    )
    script = tmp_path / "probe.py"
    script.write_text(probe)
    # a new network namespace (lo down) with its own sysfs showing it
    done = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c",
         'mount -t sysfs sysfs /sys && exec "$0" "$1"', sys.executable, str(script)],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("no permission for a network namespace here")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]
