"""The guest agent's payload, packed once per set of inputs and kept per user.

Packing it (the Python runtime copied and pruned, the stdlib and the agent byte-compiled,
the dataclass code recorded) is most of a guest-agent build, yet its inputs rarely change
while what sits around it in the initramfs does: every workspace (and every test lab) has
a cosign key of its own, which ``build.initramfs_key`` covers, so that cache misses on a
new workspace where this one hits.

Keyed like the build's fingerprint, each input file by path, size and mtime
(``PackInputs.files``: the .debs, the ``guest`` tree, the packer and the host
interpreter); stored as a zstd newc archive in a ``BlobCache`` (sha256-checked on read,
written atomically, so concurrent builds share it safely) and read back to exactly the
entries a fresh pack gives, so the image is byte-identical either way. ``reuse=False``
(``cloudboot build --force``) packs afresh and refreshes the entry.
"""

from __future__ import annotations

import hashlib
import json

from publisher.media import cpio
from publisher.media.buildcache import BlobCache, stat_stamp
from publisher.media.debs import user_cache_dir
from publisher.media.guestpack import GUEST_PYTHON, PackInputs, guest_agent_entries


def pack_key(inputs: PackInputs) -> str:
    """The inputs' files, and this module and the cpio code that store the entries."""
    files = [*inputs.files(), cpio.__file__, __file__]
    doc = {"arch": inputs.arch.value, "python": GUEST_PYTHON,
           "files": [stat_stamp(f) for f in files]}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def agent_entries(
    inputs: PackInputs, *, reuse: bool = True, cache: BlobCache | None = None
) -> list[cpio.Entry]:
    """``guest_agent_entries(inputs)``, from the per-user cache when its inputs match."""
    blobs = cache or BlobCache(user_cache_dir("guestpack"))
    kind, key = f"guestpack-{inputs.arch.value}", pack_key(inputs)
    if reuse and (stored := blobs.get(kind, key)) is not None:
        return cpio.parse_newc(cpio.decompress(stored))
    entries = guest_agent_entries(inputs)
    blobs.drop(kind, key)  # a forced pack replaces what was there
    blobs.put(kind, key, cpio.compress(cpio.newc(entries), cpio.Compression.ZSTD, level=1))
    return entries
