"""What the guest agent's packer precomputes in a host interpreter, so the guest does not
spend boot time on it: the code of the guest's dataclass methods
(``guest.agent.precompiled``).

It runs in a fresh host interpreter that imports the packed app directory, under a
fixed ``PYTHONHASHSEED`` (``PACKER_ENV``): what it writes goes into boot.iso, whose bytes
must not depend on the process that built it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from publisher.run import run

#: Where the agent's app directory lives in the guest.
GUEST_APP_DIR = "/usr/lib/cloudboot"
#: Every host interpreter the packer starts: set and frozenset order (in bytecode
#: constants, marshalled code) must not change from one build to the next.
PACKER_ENV = {"PYTHONHASHSEED": "0"}
#: Every guest module a boot may import (lazily or not): their dataclasses are cached.
GUEST_MODULES = (
    *(f"guest.agent.{m}" for m in ("main", "sysguest", "fetch", "pulls", "diskread", "menu",
                                   "metadata", "template", "lease", "reset", "httpclient",
                                   "machine", "trust", "floor", "secureboot", "lldp")),
    "guest.contract.cosign", "guest.contract.plan", "guest.contract.lldp",
)  # fmt: skip
_RECORD = """
from guest.agent import precompiled
data = precompiled.record({modules!r})
with open({out!r}, "wb") as out:
    out.write(data)
"""


def record_dataclass_code(app: Path) -> None:
    """Compile the guest's dataclass methods here (see ``guest.agent.precompiled``): a fresh
    host interpreter imports the packed modules and records. Only when the host's minor
    Python version is the guest's (the caller checks): other code objects would not load."""
    out = app / "dataclass-code.marshal"
    _run_packed(app, _RECORD.format(modules=GUEST_MODULES, out=str(out)))


def _run_packed(app: Path, code: str) -> None:
    """Run ``code`` in a fresh host interpreter that imports only from the packed app dir
    (``-S``: not the host's site-packages) and the host's stdlib."""
    prelude = f"import sys\nsys.path.insert(0, {str(app)!r})\n"
    run([sys.executable, "-S", "-B", "-c", prelude + code], env=PACKER_ENV)
