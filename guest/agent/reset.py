"""``cloudboot-reset``: back to the menu by forgetting the staged target (spec 5, NVRAM reset).

The rule is the same in the guest (efivarfs) and on the host (a QEMU vars file): delete
``Boot0001`` and drop ``0001`` from ``BootOrder``, leave every other variable alone. Both
stores satisfy one tiny protocol so the rule is written once.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Protocol

from guest.contract.efi import BOOT_VARIABLE_ATTRIBUTES, GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.edk2vars import VarsFile
from guest.contract.efi.efivarfs import EFIVARS_DIR, EfiVarStore
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic

CLOUDBOOT_ENTRY = 0x0001


class BootVariables(Protocol):
    def read_data(self, name: str) -> tuple[int, bytes] | None: ...
    def write_data(self, name: str, attributes: int, data: bytes) -> None: ...
    def remove(self, name: str) -> bool: ...


class _EfivarfsVariables:
    def __init__(self, store: EfiVarStore) -> None:
        self.store = store

    def read_data(self, name: str) -> tuple[int, bytes] | None:
        var = self.store.read(name, GLOBAL_VARIABLE_GUID)
        return (var.attributes, var.data) if var else None

    def write_data(self, name: str, attributes: int, data: bytes) -> None:
        self.store.write(name, GLOBAL_VARIABLE_GUID, attributes, data)

    def remove(self, name: str) -> bool:
        return self.store.delete(name, GLOBAL_VARIABLE_GUID)


class _VarsFileVariables:
    def __init__(self, vars_file: VarsFile, guid: uuid.UUID = GLOBAL_VARIABLE_GUID) -> None:
        self.file = vars_file
        self.guid = guid

    def read_data(self, name: str) -> tuple[int, bytes] | None:
        var = self.file.get(name, self.guid)
        return (var.attributes, var.data) if var else None

    def write_data(self, name: str, attributes: int, data: bytes) -> None:
        self.file.set(name, self.guid, attributes, data)

    def remove(self, name: str) -> bool:
        return self.file.delete(name, self.guid)


def forget_staged_target(variables: BootVariables) -> bool:
    """Delete Boot0001 and drop 0001 from BootOrder; True when anything changed."""
    changed = variables.remove("Boot0001")
    current = variables.read_data("BootOrder")
    if current is not None:
        attributes, data = current
        order = bootorder.without(bootorder.parse(data), CLOUDBOOT_ENTRY)
        if order is not None:
            variables.write_data(
                "BootOrder", attributes or BOOT_VARIABLE_ATTRIBUTES, bootorder.serialise(order)
            )
            changed = True
    return changed


def reset_efivars(root: Path = EFIVARS_DIR) -> bool:
    """The guest side: edit the running firmware's variables through efivarfs."""
    return forget_staged_target(_EfivarfsVariables(EfiVarStore(root)))


def reset_vars_file(path: Path) -> bool:
    """The host side: the same edit on a stopped VM's edk2 vars file, written atomically.

    A vars file that was never initialised by the firmware (AAVMF's blank flash) holds no
    boot entries, so there is nothing to do.
    """
    image = path.read_bytes()
    if not image.strip(b"\x00\xff"):
        return False
    try:
        vars_file = VarsFile.from_bytes(image)
    except CloudbootError as exc:
        raise CloudbootError(exc.message, where=f"{path}: {exc.where}") from exc
    if not forget_staged_target(_VarsFileVariables(vars_file)):
        return False
    write_atomic(path, bytes(vars_file), durable=True)
    return True


def replace_vars_file(path: Path, template: Path) -> None:
    """The heavier reset: the firmware's pristine VARS template over the VM's vars file.

    Needed when the VM's device list changed: a stale Boot#### pointing at a PCI slot
    that now holds another device can hang OVMF.
    """
    write_atomic(path, template.read_bytes(), durable=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cloudboot-reset`` command inside the guest image."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else EFIVARS_DIR
    try:
        changed = reset_efivars(root)
    except CloudbootError as exc:
        print(f"cloudboot-reset: error: {exc}", file=sys.stderr)
        return 1
    print(
        "cloudboot-reset: "
        + (
            "Boot0001 removed; next boot shows the menu"
            if changed
            else "no staged target; nothing to do"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
