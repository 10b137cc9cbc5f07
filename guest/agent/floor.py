"""The freshness floor: the newest signed version of each plan ref this machine accepted.

A tag moved back to any plan ever signed would otherwise verify (the old signature is
still valid). The publisher puts a monotonic version in the signed payload
(docs/trust-model.md); the guest refuses a plan whose version is below the floor kept
for its ref.

The floor lives in ``\\cloudboot\\floor.json`` on the cache ESP, not in an EFI variable:
the dev loop's NVRAM reset replaces the whole vars store (QEMU and vfkit alike), while
the cache disk persists, and the agent already writes that partition on every staging.
Pure: bytes in, bytes out; the agent reads and writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

FLOOR_PATH = "\\cloudboot\\floor.json"
MAX_FLOOR_BYTES = 64 << 10
MAX_ENTRIES = 256


@dataclass(frozen=True)
class Check:
    """One plan's signed version against the floor kept for its ref."""

    key: str
    version: int
    floor: int | None

    @property
    def stale(self) -> bool:
        """Below the floor: the tag was moved back to something older (a rollback)."""
        return self.floor is not None and self.version < self.floor


def parse(data: bytes | None) -> dict[str, int]:
    """The floor map; an absent, oversized or malformed file is an empty floor.

    (Whoever can write the cache disk can also delete the file: the floor guards
    against the network, not against the disk's owner.)
    """
    if not data or len(data) > MAX_FLOOR_BYTES:
        return {}
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return {}
    floors = doc.get("floors") if isinstance(doc, dict) else None
    if not isinstance(floors, dict):
        return {}
    return {
        k: v
        for k, v in floors.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
    }


def dump(floors: Mapping[str, int]) -> bytes:
    """Canonical bytes; past ``MAX_ENTRIES`` the oldest versions are forgotten."""
    kept = sorted(floors.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ENTRIES]
    doc = {"floors": dict(sorted(kept)), "format": 1}
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def check(floors: Mapping[str, int], key: str, version: int | None) -> Check:
    """Compare ``version`` (None: unversioned, counts as 0) with the floor for ``key``."""
    return Check(key, version or 0, floors.get(key))


def advanced(floors: Mapping[str, int], accepted: Mapping[str, int]) -> dict[str, int]:
    """The floor after accepting ``accepted``: each ref's floor becomes what was accepted
    (a deliberate rollback lowers it; a normal boot raises it or leaves it)."""
    merged = dict(floors)
    merged.update(accepted)
    return merged
