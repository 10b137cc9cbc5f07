"""What a FATAL line suggests: one place that maps an agent error to the user's next step.

The hints name the knob, the plan field or the document to look at, and say whether
NVRAM was touched (docs/wire-formats.md §5: before the NVRAM step it never is). Error
classes of lazily imported modules are matched only when their module was imported, so
asking for a hint never imports the registry client or cosign.
"""

from __future__ import annotations

import sys

from guest.agent import blockdev, stage, template
from guest.contract.errors import CloudbootError

DEBUG_HINT = "cloudboot.debug=1 on the kernel command line gives a shell on the console"


def _is(exc: BaseException, module: str, name: str) -> bool:
    """isinstance against a class of a lazily imported module (not imported: not one)."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(exc, getattr(mod, name))


def hint_for(exc: CloudbootError) -> str:
    if _is(exc, "guest.contract.cosign", "SigningError"):
        return (
            "publish the plan with the key baked into boot.iso (`cloudboot push plan --key`:"
            " it pins the plan's artifacts and signs it fresh), see docs/trust-model.md,"
            " or boot with cloudboot.cosign=warn; NVRAM was not touched"
        )
    if isinstance(exc, stage.StageError):
        return stage.CACHE_DISK_HINT
    if isinstance(exc, blockdev.DeviceNotFoundError):
        return "check the target's disk.device in the plan against the disks attached"
    if _is(exc, "guest.agent.fetch", "CredentialsError"):
        return (
            "check rd.cloudboot.user / rd.cloudboot.pass on the baked command line"
            " (docs/wire-formats.md §2.6); NVRAM was not touched"
        )
    if _is(exc, "guest.agent.fetch", "FetchError"):
        return (
            "check the network, the registry address (the host is the DHCP gateway: 10.0.2.2 "
            "under QEMU, the vmnet bridge address under vfkit) "
            "and cloudboot.plan"
        )
    if isinstance(exc, template.TemplateError):
        return "fix the template (the target's cmdline or cloudboot.plan); NVRAM was not touched"
    return DEBUG_HINT
