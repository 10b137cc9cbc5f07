"""The per-user cache of the guest agent's payload (publisher/media/packcache.py): a hit
gives exactly the entries a fresh pack gives, any input edit misses, ``--force`` repacks."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from guest.contract.arch import Arch
from publisher.media import cpio
from publisher.media.buildcache import BlobCache
from publisher.media.guestpack import pack_inputs
from publisher.media.packcache import agent_entries, pack_key


def test_a_hit_is_the_fresh_pack_and_force_packs_again(tmp_path: Path) -> None:
    inputs = pack_inputs(Arch.X86_64)
    cache = BlobCache(tmp_path / "guestpack")
    kind, key = "guestpack-x86_64", pack_key(inputs)
    # an entry under the inputs' key is what a build then uses, without packing...
    planted = [cpio.file("/planted", b"from the cache")]
    cache.put(kind, key, cpio.compress(cpio.newc(planted), cpio.Compression.ZSTD))
    assert agent_entries(inputs, cache=cache) == planted
    # ...and --force (reuse=False) packs afresh and replaces it
    fresh = agent_entries(inputs, cache=cache, reuse=False)
    assert any(e.path == "/usr/lib/cloudboot/cloud-boot-init.py" for e in fresh)
    assert agent_entries(inputs, cache=cache) == fresh  # read back: the same entries


def test_any_input_edit_is_another_key(tmp_path: Path) -> None:
    inputs = pack_inputs(Arch.X86_64)
    key = pack_key(inputs)
    assert pack_key(pack_inputs(Arch.X86_64)) == key  # stable for the same files
    assert pack_key(dataclasses.replace(inputs, arch=Arch.AARCH64)) != key
    guest = tmp_path / "guest"
    shutil.copytree(inputs.guest, guest)
    copied = dataclasses.replace(inputs, guest=guest)
    before = pack_key(copied)
    assert before != key  # other paths
    module = guest / "agent" / "main.py"
    module.write_text(module.read_text() + "\n# edited\n")
    edited = pack_key(copied)
    assert edited != before  # its size
    stamp = module.stat()
    os.utime(module, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert pack_key(copied) not in (before, edited)  # its mtime alone
