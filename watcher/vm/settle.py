"""A settled NVRAM for QEMU restarts: the firmware's first-pass work, done once per VM.

Every live reload restarts the VM with its NVRAM cleared, so the guest agent finds no
Boot0001 and stages the new plan's target. Cleared used to mean the firmware's VARS
template, byte for byte, and edk2 then spends its first pass initialising that store:
boot options for every device, BootOrder, console paths, language, each a flash write
that QEMU emulates slowly without KVM. Measured under TCG (three bare boots of each of
two images, medians): 6.8 s from QEMU start to the kernel banner from a settled store, 8.1
and 10.3 s from the template (docs/wire-formats.md §5.11).

So the first launch from the template also keeps a copy of the store as the firmware left
it: taken when the bootstrap kernel's banner appears on the serial console (the firmware
has handed over; none of the ISO's code beyond the kernel's first steps has run, and the
guest agent, which writes Boot0001 seconds later, has not started), with the VM paused
(QMP ``stop``/``cont``) so the copy is not torn. It is kept next to the store as
``<store>.settled-<key>`` and later restarts of the loop restore it instead of the
template: what this firmware writes into this template for this device set, nothing a
target OS wrote. The copy's Boot0001 must be the firmware's own entry for the ISO (edk2
marks what it creates, ``loadoption.EDK2_AUTO_CREATED``); a copy whose Boot0001 is
anything else (a staged target: the capture came too late) is not kept. That entry moves
to a free number (BootOrder following), so the store names no Boot0001 and the agent's
later Boot0001 overwrites nothing of the firmware's: after such an overwrite edk2
re-creates its entry on the next pass. The entry itself has to stay: with it deleted,
OVMF booted its UEFI Shell on the next pass and never tried the ISO (tried here;
tests/test_vm_settle.py boots the settled copy).

One variable of the old store is carried onto the copy at each restart: edk2's cache of
where it found the disk of our Boot0001's HD()-rooted path (``HDDP``, written on the first
pass that boots a staged target), so later passes skip the search. Only an NV|BS copy of
it is carried: no OS can write a variable without runtime access.

The key is a digest of the firmware code, the template and the QEMU command line, so
another firmware, template or device set finds no match: the template is restored and a
new copy taken. ``cloudboot vm reset-nvram`` writes the template itself and drops the
copies.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from guest.contract.efi import (
    BOOTSERVICE_ACCESS,
    CLOUDBOOT_BOOT_NUMBER,
    CLOUDBOOT_BOOT_VARIABLE,
    GLOBAL_VARIABLE_GUID,
    NON_VOLATILE,
    boot_variable_name,
    bootorder,
)
from guest.contract.efi.edk2vars import VarsFile
from guest.contract.efi.loadoption import LoadOption
from guest.contract.efi.varstore import Variable
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from watcher.vm import nvram
from watcher.vm.firmware import Firmware
from watcher.vm.qmp import QmpClient, QmpError
from watcher.watch.lineclock import LineClock

log = structlog.get_logger()

#: The serial line that says the firmware has handed over to the bootstrap kernel.
KERNEL_BANNER = r"Linux version "
#: How long the capture waits for that line (TCG firmware passes take 6-12 s here).
CAPTURE_TIMEOUT_S = 600.0
#: edk2's cache of where it found the disk of an HD()-rooted boot path such as our
#: Boot0001's (the front device path, ``mBmHardDriveBootVariableGuid``): without it the
#: firmware searches the devices for the partition on every pass after staging, and
#: writes the cache again. It is kept across restarts, and only as NV|BS: a variable
#: without runtime access was written before ExitBootServices, by firmware, not by an OS.
HD_PATH_CACHE = ("HDDP", uuid.UUID("fab7e9e1-39dd-4f2b-8408-e20e906cb6de"))
FIRMWARE_ONLY = NON_VOLATILE | BOOTSERVICE_ACCESS


def settle_key(firmware: Firmware, argv: list[str]) -> str:
    """What the settled store depends on: firmware code, VARS template, QEMU argv."""
    parts = [nvram.file_digest(firmware.code), nvram.file_digest(firmware.vars_template)]
    blob = json.dumps([parts, argv]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def restore(store: Path, firmware: Firmware, key: str) -> bool:
    """Clear ``store`` for a restart: the settled copy for ``key`` when there is one
    (True), else the template (False: the launch should :func:`start_capture`).

    Onto the settled copy goes the firmware's HD() path cache from the old store, if any
    (:data:`HD_PATH_CACHE`).
    """
    settled = nvram.settled_path(store, key)
    if not settled.is_file():
        nvram.restore_template(store, firmware.vars_template)
        log.info("nvram reset", store=str(store), source="template", settled=False)
        return False
    cache = _path_cache(store)
    if cache is None:
        nvram.restore_template(store, settled)
    else:
        vars_file = VarsFile.from_bytes(settled.read_bytes())
        vars_file.write(*HD_PATH_CACHE, cache.attributes, cache.data)
        write_atomic(store, bytes(vars_file), durable=True)
    log.info("nvram reset", store=str(store), source="settled copy", settled=True,
             path_cache=cache is not None)  # fmt: skip
    return True


def _path_cache(store: Path) -> Variable | None:
    """The HD() path cache in ``store``, when only the firmware can have written it."""
    try:
        found = VarsFile.from_bytes(store.read_bytes()).read(*HD_PATH_CACHE)
    except (OSError, CloudbootError):
        return None  # no store yet, or AAVMF's blank flash
    return found if found is not None and found.attributes == FIRMWARE_ONLY else None


def settled_image(image: bytes) -> bytes:
    """The captured store as restarts get it, with no Boot0001.

    Its Boot0001, if any, must be the firmware's own entry for the ISO (CloudbootError
    otherwise: a staged target, the capture came too late). That entry moves to the
    first free number, BootOrder following, so the Boot0001 the agent (or the host loop)
    stages later replaces nothing of the firmware's: otherwise the firmware's next pass
    re-creates its ISO entry, flash writes that cost about a second under TCG.
    """
    vars_file = VarsFile.from_bytes(image)
    entry = vars_file.read(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID)
    if entry is None:
        return image
    if not LoadOption.from_bytes(entry.data).firmware_created:
        raise CloudbootError(
            f"{CLOUDBOOT_BOOT_VARIABLE} is already a staged target, not the firmware's entry"
        )
    taken = {v.name for v in vars_file.live() if v.guid == GLOBAL_VARIABLE_GUID}
    number = next(n for n in range(2, 0x10000) if boot_variable_name(n) not in taken)
    vars_file.delete(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID)
    vars_file.write(boot_variable_name(number), GLOBAL_VARIABLE_GUID, entry.attributes, entry.data)
    order = vars_file.read("BootOrder", GLOBAL_VARIABLE_GUID)
    if order is not None:
        moved = [number if n == CLOUDBOOT_BOOT_NUMBER else n for n in bootorder.parse(order.data)]
        vars_file.write("BootOrder", GLOBAL_VARIABLE_GUID, order.attributes,
                        bootorder.serialise(moved))  # fmt: skip
    return bytes(vars_file)


def capture(store: Path, qmp_socket: Path, key: str) -> Path:
    """Copy ``store`` from the paused VM and keep it, checked, as the settled copy for
    ``key`` (older copies for other keys are removed); returns its path."""
    with QmpClient(qmp_socket, timeout=5.0) as qmp:
        qmp.execute("stop")
        try:
            image = store.read_bytes()
        finally:
            qmp.execute("cont")
    target = nvram.settled_path(store, key)
    write_atomic(target, settled_image(image), durable=True)
    for old in nvram.settled_copies(store):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def start_capture(
    store: Path, qmp_socket: Path, serial_log: Path, offset: int, key: str,
    alive: Callable[[], bool],
) -> threading.Thread:  # fmt: skip
    """In the background: wait for the kernel banner after byte ``offset`` of the serial
    log (the launch's first), then :func:`capture`. A VM that stops first, a banner that
    never comes or a store that does not parse only means no settled copy: the next
    restart restores the template again."""

    def run() -> None:
        try:
            with LineClock(serial_log, start=offset, poll_s=0.02) as clock:
                clock.wait(KERNEL_BANNER, since=offset, timeout=CAPTURE_TIMEOUT_S, alive=alive)
            if not alive():
                return
            path = capture(store, qmp_socket, key)
            log.info("nvram: settled copy kept", path=str(path))
        except (LookupError, TimeoutError, OSError, QmpError, CloudbootError) as exc:
            log.info("nvram: no settled copy this time", reason=_first_line(exc))

    thread = threading.Thread(target=run, name="nvram-settle", daemon=True)
    thread.start()
    return thread


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]
