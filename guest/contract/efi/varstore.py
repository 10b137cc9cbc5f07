"""The UEFI variable-store model: one protocol, two stores, and the two edits cloudboot
makes to NVRAM, written once.

The guest edits the running firmware's variables through Linux efivarfs
(``efivarfs.EfiVarStore``); the host edits a stopped VM's edk2 vars file
(``edk2vars.VarsFile``). Both implement ``VariableStore`` (virt-firmware's idea: one
variable model, many stores), so staging a target (our Boot0001, first in BootOrder) and
going back to the menu (Boot0001 and its BootOrder slot gone, every other variable left
alone) are the same code on both sides (docs/wire-formats.md §5.7, §5.8).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from guest.contract.efi import (
    BOOT_VARIABLE_ATTRIBUTES,
    CLOUDBOOT_BOOT_NUMBER,
    CLOUDBOOT_BOOT_VARIABLE,
    GLOBAL_VARIABLE_GUID,
    bootorder,
)


@dataclass(frozen=True)
class Variable:
    """One variable's value as the firmware returns it: attributes and data."""

    attributes: int
    data: bytes


class VariableStore(Protocol):
    def read(self, name: str, guid: uuid.UUID) -> Variable | None:
        """The variable, or None when the store does not hold it."""

    def write(self, name: str, guid: uuid.UUID, attributes: int, data: bytes) -> None:
        """Create or replace the variable."""

    def delete(self, name: str, guid: uuid.UUID) -> bool:
        """Remove the variable; False when the store did not hold it (nothing changed)."""


def _write_boot_order(store: VariableStore, attributes: int, order: list[int]) -> None:
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, attributes or BOOT_VARIABLE_ATTRIBUTES,
                bootorder.serialise(order))  # fmt: skip


def stage_boot_entry(store: VariableStore, load_option: bytes) -> bool:
    """Our Boot0001 = ``load_option``, and 0001 first in BootOrder; True when BootOrder
    was rewritten (an unchanged order is not written again: flash wear, slow reclaims)."""
    store.write(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID, BOOT_VARIABLE_ATTRIBUTES,
                load_option)  # fmt: skip
    current = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    order = bootorder.parse(current.data) if current else []
    first = bootorder.put_first(order, CLOUDBOOT_BOOT_NUMBER)
    if first is None:
        return False
    _write_boot_order(store, BOOT_VARIABLE_ATTRIBUTES, first)
    return True


def forget_staged_target(store: VariableStore) -> bool:
    """Back to the menu: delete Boot0001 and drop 0001 from BootOrder; True when anything
    changed."""
    changed = store.delete(CLOUDBOOT_BOOT_VARIABLE, GLOBAL_VARIABLE_GUID)
    current = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    if current is not None:
        order = bootorder.without(bootorder.parse(current.data), CLOUDBOOT_BOOT_NUMBER)
        if order is not None:
            _write_boot_order(store, current.attributes, order)
            changed = True
    return changed
