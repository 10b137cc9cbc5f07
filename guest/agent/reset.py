"""``cloudboot-reset``: back to the menu by forgetting the staged target
(docs/wire-formats.md §5.11).

The edit itself (delete ``Boot0001``, drop ``0001`` from ``BootOrder``, leave every other
variable alone) is ``guest.contract.efi.varstore.forget_staged_target``, which the host's
``cloudboot vm reset-nvram --menu`` runs on a stopped VM's vars file; here it runs on the
running firmware's variables through efivarfs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from guest.contract.efi import CLOUDBOOT_BOOT_VARIABLE
from guest.contract.efi.efivarfs import EFIVARS_DIR, EfiVarStore
from guest.contract.efi.varstore import forget_staged_target
from guest.contract.errors import CloudbootError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cloudboot-reset`` command inside the guest image."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else EFIVARS_DIR
    try:
        changed = forget_staged_target(EfiVarStore(root))
    except CloudbootError as exc:
        print(f"cloudboot-reset: error: {exc}", file=sys.stderr)
        return 1
    if changed:
        print(f"cloudboot-reset: {CLOUDBOOT_BOOT_VARIABLE} removed; next boot shows the menu")
    else:
        print("cloudboot-reset: no staged target; nothing to do")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
