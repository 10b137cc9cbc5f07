"""The macOS loop, on Linux: `cloudboot up` with ``[vm] backend = "vfkit"``, as a Mac runs it.

What makes it Mac-shaped:
- ``vfkit`` on PATH is the stand-in (tests/vfkit_standin/: vfkit's CLI, REST API, virtio
  console and vmnet NAT, QEMU underneath); cloudboot's own PATH has no QEMU, no apt-get,
  dpkg-deb, mkfs.ext4 or docker-registry (none exists on a Mac with Homebrew);
- the guest's network is vmnet's: it sits on 192.168.64.0/24, its gateway is the bridge
  address, and the host's loopback (where the registry listens) is NOT reachable; the
  guest gets to the registry only through the forwarder `cloudboot up` binds on the bridge
  address while the VM runs (the stand-in's bridge address is 127.0.64.1 on this host);
- the console is hvc0: the agent's and the target's output reach serial.log through the
  virtio console; a guest reboot resets the VM in place (vfkit keeps running).

Then, as a user would: the first target boots, an edit boots the other target, Ctrl-C
cleans up (VM, forwarder, registry). A second test shows the NAT is real: with the
forwarder bound elsewhere the guest cannot reach the registry at all.

Boot inputs come from the OCI base artifact: a "Linux build host" step (full PATH) runs
`cloudboot push base` once and the workspace's recipe pins it; `cloudboot up` then starts
with an empty package cache (tests/e2e/macloop.py, ``BUILD_HOST``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import TARGET_UP
from tests.e2e.macloop import BRIDGE_HOST, GUEST_BRIDGE, MacLoop, port_open

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists(), reason="ovmf not installed"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the vfkit stand-in's NAT needs root (netns)"),
]


@pytest.fixture
def loop_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ws"


@pytest.mark.parametrize("reboot", ["in-place", "exit"])
def test_macos_shaped_loop(loop_root: Path, reboot: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reboot``: VZ's reset in place (vfkit keeps running), or a VZ that reports the
    reboot as a stop (vfkit exits; the supervisor relaunches it with the staged NVRAM)."""
    monkeypatch.setenv("VFKIT_STANDIN_REBOOT", reboot)
    with MacLoop(loop_root) as loop:
        guest_ref = f"oci://{GUEST_BRIDGE}:{loop.port}/cloudboot/default:latest"
        # 1. First boot: firmware -> UKI (console=hvc0) -> agent on the virtio console,
        #    plan over the bridge forwarder -> Boot0001 -> reboot -> target alpha.
        up, _ = loop.serial.wait_for(rf"{TARGET_UP} target=alpha .*", alive=loop.alive)
        assert "console=hvc0" in up.group(0)  # the target, on the virtio console too
        started = [e for e in loop.log_events() if e.get("event") == "vm started"]
        agent_log = loop.serial.text()
        if reboot == "in-place":
            assert len(started) == 1, "the reboot into the target stayed in the same vfkit"
        else:  # relaunched once, NVRAM kept; the agent's pass is in the previous log
            assert [e["reset"] for e in started] == [True, False]
            agent_log = (loop.serial.path.parent / "serial.log.1").read_text()
        assert loop.vm_pid() == started[-1]["pid"]
        assert f"cloudboot.plan rendered: {guest_ref}" in agent_log
        assert "plan signature verified" in agent_log
        assert "Boot0001 = cloud-boot alpha" in agent_log
        assert port_open(BRIDGE_HOST, loop.port), "the forwarder runs while the VM does"

        # 2. Edit the default target: signed, published, restarted with a fresh NVRAM.
        events, pid = len(loop.log_events()), loop.vm_pid()
        edited = loop.edit(loop.plan, 'default_target = "alpha"', 'default_target = "beta"')
        restart = loop.wait_event(
            lambda e: e.get("event") == "vm started" and e.get("reset") is True, after=events
        )
        assert restart["pid"] != pid
        # vfkit truncates serial.log at each launch: this launch's log starts at 0
        _, seen_beta = loop.serial.wait_for(rf"{TARGET_UP} target=beta", timeout=240,
                                            alive=loop.alive)  # fmt: skip
        after = loop.serial.text()
        if reboot == "exit":
            after = (loop.serial.path.parent / "serial.log.1").read_text() + after
        assert "Boot0001 = cloud-boot beta" in after and "target=alpha" not in after
        print(f"macOS-shaped edit -> target beta running: {seen_beta - edited:.1f} s")
        # `up`'s result, read across vfkit's fresh serial.log of each launch.
        result = loop.wait_event(lambda e: e.get("event") == "reload" and e.get("number") == 2,
                                 after=events)  # fmt: skip
        assert (result["outcome"], result["target"]) == ("up", "beta"), result
        final_pid = loop.vm_pid()

    assert loop.exit_code == 0, loop.log_path.read_text()[-3000:]
    assert not Path(f"/proc/{final_pid}").exists()  # the vfkit `up` started is gone
    assert not port_open(BRIDGE_HOST, loop.port), "the forwarder is gone with the VM"
    assert not loop.registry_up()
    assert "registry: started builtin" in loop.log_path.read_text()  # up's own, no docker
    # boot inputs came from the OCI base artifact: no Debian package in up's (empty) cache
    cache = Path(loop.env["XDG_CACHE_HOME"]) / "cloudboot"
    assert not list(cache.glob("debs/*.deb")) and any(cache.glob("base/*"))


def test_guest_reaches_the_registry_only_through_the_bridge(loop_root: Path) -> None:
    """The same loop with the forwarder bound where vmnet's bridge is not: the registry on
    the host's loopback is then out of the guest's reach, as on a Mac."""
    with MacLoop(loop_root, bridge_address="127.0.64.2") as loop:
        match, _ = loop.serial.wait_for(r"^FATAL: .*", alive=loop.alive)
        text = loop.serial.text()
        assert f"cannot reach {GUEST_BRIDGE}:{loop.port}" in match.group(0), text[-2000:]
        assert TARGET_UP not in text and "Boot0001" not in text
        assert loop.registry_up(), "the registry itself is up, on loopback"
