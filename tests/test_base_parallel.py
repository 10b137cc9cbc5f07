"""Two `cloudboot push base` at once on one host with no demo disk cached yet (two CI
jobs on one build host, or two arches pushed side by side): both succeed and publish the
same demo disk, the first one made. mkfs stamps file times into the image, so each push
makes different bytes; the per-user cache entry must not be swapped under a push that
has hashed it (CI, 2026-11-28: ``DIGEST_INVALID content is sha256:8bfc..., not
sha256:caa2...``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from guest.contract.oci import Index, Manifest, parse_ref
from publisher.localregistry import local_registry
from publisher.media.base import MEDIA_DEMO_DISK
from publisher.media.debs import user_cache_dir
from publisher.registry import RegistryClient
from publisher.signing import write_key_pair
from tests.helpers import CLOUDBOOT, REPO


def _cache_without_demo_disks(root: Path) -> Path:
    """An XDG cache with this user's caches (Debian packages: no network here) except
    the demo disks."""
    cache = root / "cloudboot"
    cache.mkdir(parents=True)
    real = user_cache_dir("x").parent
    for entry in real.iterdir() if real.is_dir() else ():
        if entry.name != "base-demo":
            (cache / entry.name).symlink_to(entry)
    return root


def _demo_disk_digest(client: RegistryClient, pushed: str) -> str:
    ref = parse_ref(pushed)
    index = Index.from_bytes(client.get_manifest(ref)[0], what="base")
    (entry,) = index.manifests
    manifest = Manifest.from_bytes(client.get_manifest(ref.with_digest(entry.digest))[0])
    (layer,) = [lay for lay in manifest.layers if lay.media_type == MEDIA_DEMO_DISK]
    return layer.digest


def test_two_base_pushes_at_once_publish_the_first_demo_disk(tmp_path: Path) -> None:
    env = {**os.environ, "COSIGN_PASSWORD": "",
           "XDG_CACHE_HOME": str(_cache_without_demo_disks(tmp_path / "cache"))}  # fmt: skip
    with local_registry(tmp_path / "registry") as reg:
        procs = []
        for name in ("one", "two"):
            ws = tmp_path / name
            (ws / "kernel").mkdir(parents=True)
            (ws / "kernel" / "recipe.toml").write_text((REPO / "kernel/recipe.toml").read_text())
            (ws / "cloudboot.toml").write_text(f'[registry]\nurl = "{reg.address}"\n')
            write_key_pair(ws / "cosign.key", ws / "cosign.pub", b"")
            argv = [str(CLOUDBOOT), "-C", str(ws), "push", "base", "--arch", "x86_64",
                    f"{reg.address}/cloudboot/base-{name}:1", "--json"]  # fmt: skip
            procs.append(subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))  # fmt: skip
        results = [proc.communicate(timeout=600) for proc in procs]
        for proc, (_, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err[-3000:]
        client = RegistryClient()
        digests = {
            _demo_disk_digest(
                client, f"{reg.address}/cloudboot/base-{name}@{json.loads(out)['digest']}"
            )
            for name, (out, _) in zip(("one", "two"), results, strict=True)
        }
    assert len(digests) == 1  # one demo disk, whichever push made it first
    kept = list((tmp_path / "cache" / "cloudboot" / "base-demo").iterdir())
    assert [p.suffix for p in kept] == [".gz"]  # the entry, no temporary file left
