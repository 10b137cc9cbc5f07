"""LLDP on the NIC the guest configured: listen for the switch's announcement in the
background, and announce this machine once (docs/knobs.md, ``cloudboot.lldp*``).

The listen starts when the network comes up and runs alongside the plan fetch and
signature check. A plan that does not mention ``lldp.`` is evaluated with whatever has
arrived by then and never waits (as upstream's guest does for every plan); a plan that
branches on ``lldp.*`` waits for the first frame until ``cloudboot.lldp.wait`` (counted
from the listen's start) runs out, so its choice does not depend on a race with the
switch's announcement interval (``lldp.available`` false if nothing came).
One frame is enough; a frame that does not parse is skipped and the listen goes on until
``cloudboot.lldp.wait`` runs out. Raw ``AF_PACKET`` sockets bound to the interface and
the LLDP ethertype, with the LLDP group address added to the interface's multicast
list (virtio-net and most NICs drop group frames nobody asked for).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from guest.contract import plan
from guest.contract.errors import FormatError
from guest.contract.lldp import (
    ETHERTYPE,
    MAX_LLDPDU,
    MULTICAST,
    Neighbour,
    build_lldpdu,
    parse_lldpdu as parse_lldpdu,
)

if TYPE_CHECKING:
    from guest.agent.cmdline import Options
    from guest.agent.console import Console

SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST = 263, 1, 0


def _packet_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETHERTYPE))
    try:
        sock.bind((interface, ETHERTYPE))
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """One LLDP listen on ``interface`` for up to ``wait`` seconds, in a daemon thread."""

    def __init__(self, interface: str, wait: float) -> None:
        self.interface = interface
        self.wait = wait
        self.neighbour: Neighbour | None = None
        self.problems: list[str] = []  # frames skipped, a socket that would not open
        self._done = threading.Event()
        threading.Thread(target=self._run, name="lldp", daemon=True).start()

    def _run(self) -> None:
        try:
            self._listen()
        except OSError as exc:
            self.problems.append(f"cannot listen on {self.interface}: {exc.strerror or exc}")
        finally:
            self._done.set()

    def _listen(self) -> None:
        deadline = time.monotonic() + self.wait
        with _packet_socket(self.interface) as sock:
            index = socket.if_nametoindex(self.interface)
            mreq = struct.pack("iHH8s", index, PACKET_MR_MULTICAST, 6, MULTICAST)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(MAX_LLDPDU + 1)
                except TimeoutError:
                    return
                try:
                    self.neighbour = parse_lldpdu(data)
                    return
                except FormatError as exc:
                    self.problems.append(f"skipped a frame: {exc}")

    def poll(self) -> Neighbour | None:
        """What has arrived so far; never waits."""
        return self.neighbour

    def join(self, timeout: float) -> bool:
        """Wait for the listen to end (a frame, or its deadline); True when it has."""
        return self._done.wait(timeout)

    def facts_for(self, console: Console, *, uses_lldp: bool) -> plan.Lldp:
        """The neighbour facts for a plan: one that branches on ``lldp.*`` waits for the
        first frame until ``wait`` (counted from the listen's start) runs out; any other
        takes what has arrived and never waits (docs/knobs.md)."""
        if uses_lldp and self.poll() is None:
            with console.step("lldp"):
                self.join(self.wait)
        for problem in self.problems:
            console.warn(f"lldp: {problem}")
        self.problems.clear()
        found = facts(self.poll())
        if found.available:
            console.log(
                f"lldp neighbour: chassis={found.chassis_id} port={found.port_id}"
                f" system={found.system_name!r}"
            )
        else:
            console.log(f"lldp: no neighbour heard yet on {self.interface}")
        return found


def send(interface: str, system_name: str, system_desc: str) -> None:
    """One announcement from ``interface`` to the LLDP group address."""
    mac_text = (Path("/sys/class/net") / interface / "address").read_text().strip()
    payload = build_lldpdu(bytes.fromhex(mac_text.replace(":", "")), interface, system_name,
                           system_desc)  # fmt: skip
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETHERTYPE)) as sock:
        sock.sendto(payload, (interface, ETHERTYPE, 0, 0, MULTICAST))


def start(interface: str, options: Options, arch: str) -> tuple[Listener | None, list[str]]:
    """Announce (unless ``cloudboot.lldp.tx=0``) and start listening (unless the wait is
    0), as ``cloudboot.lldp*`` say; returns the listener and lines to log."""
    if not options.lldp:
        return None, []
    notes = []
    if options.lldp_tx:
        name = options.lldp_name or f"cloud-boot-{arch}"
        try:
            send(interface, name, "cloud-boot-init (python)")
            notes.append(f"lldp: announced {name!r} on {interface}")
        except OSError as exc:
            notes.append(f"lldp: cannot announce on {interface}: {exc.strerror or exc}")
    if options.lldp_wait <= 0:
        return None, notes
    notes.append(f"lldp: listening on {interface} for up to {options.lldp_wait:g}s")
    return Listener(interface, options.lldp_wait), notes


def facts(neighbour: Neighbour | None) -> plan.Lldp:
    """The plan's ``lldp.*`` scope: ``available`` false and empty fields without a frame."""
    return neighbour.facts if neighbour is not None else plan.Lldp()
