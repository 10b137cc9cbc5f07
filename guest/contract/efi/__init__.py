"""UEFI structures the guest writes and the host resets: one module per UEFI structure.

``devpath`` (device path nodes), ``loadoption`` (EFI_LOAD_OPTION), ``bootorder``,
``varstore`` (the variable-store protocol and the edits cloudboot makes through it), and
its two stores: ``efivarfs`` (the Linux variable files) and ``edk2vars`` (an OVMF/AAVMF
vars file).
"""

from __future__ import annotations

import uuid

#: EFI_GLOBAL_VARIABLE: the vendor GUID of Boot####, BootOrder, BootNext ...
GLOBAL_VARIABLE_GUID = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")

NON_VOLATILE = 0x1
BOOTSERVICE_ACCESS = 0x2
RUNTIME_ACCESS = 0x4
#: NV|BS|RT: what Boot#### and BootOrder carry (docs/wire-formats.md §5.7).
BOOT_VARIABLE_ATTRIBUTES = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS


def boot_variable_name(number: int) -> str:
    """``Boot0001`` for 1: four upper-case hex digits, as the UEFI spec names them."""
    if not 0 <= number <= 0xFFFF:
        raise ValueError(f"boot option number {number} outside 0..0xFFFF")
    return f"Boot{number:04X}"


#: The boot option cloudboot owns: the staged target (docs/wire-formats.md §5.7).
CLOUDBOOT_BOOT_NUMBER = 0x0001
CLOUDBOOT_BOOT_VARIABLE = boot_variable_name(CLOUDBOOT_BOOT_NUMBER)
