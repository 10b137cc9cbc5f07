"""The OCI base artifact: `cloudboot push base` on this (Debian) host, then a build and the
demo disk in a workspace whose PATH has no apt-get, dpkg-deb or mkfs.ext4 and whose
cache is empty (what a Mac has); a base that is unsigned, signed by another key, or
whose blobs were altered in the registry is refused before anything in it is used.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guest.contract.gpt import read_gpt
from guest.contract.oci import Index, Manifest, parse_ref
from publisher.localregistry import RunningRegistry, local_registry
from publisher.media.base import (
    MEDIA_DEMO_DISK,
    MEDIA_PACKAGE,
    BaseError,
    BasePackages,
    unpack_tar,
)
from publisher.media.recipe import RecipeError, parse_recipe
from publisher.refsign import sign_ref
from publisher.registry import RegistryClient
from publisher.signing import generate_key_pair, parse_private_key, write_key_pair
from tests.helpers import CLOUDBOOT, REPO

CLI = CLOUDBOOT
#: What a Mac workspace's PATH offers a build (zstd: brew install zstd): no Debian tools,
#: no mkfs.ext4.
MAC_TOOLS = ("sh", "env", "uname", "cat", "zstd")


@dataclass(frozen=True)
class Pushed:
    registry: RunningRegistry
    workspace: Path
    ref: str  # REF@sha256:... as printed


def workspace(root: Path, registry: RunningRegistry, base: str | None) -> Path:
    (root / "kernel").mkdir(parents=True, exist_ok=True)
    text = (REPO / "kernel" / "recipe.toml").read_text()
    if base:
        text += f'\n[base]\noci = "{base}"\n'
    (root / "kernel" / "recipe.toml").write_text(text)
    (root / "cloudboot.toml").write_text(f'[registry]\nurl = "{registry.address}"\n')
    return root


def mac_path(root: Path) -> str:
    """A PATH directory with links to a few basic tools only."""
    bin_dir = root / "mac-bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in MAC_TOOLS:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    assert not any(shutil.which(t, path=str(bin_dir)) for t in ("apt-get", "dpkg-deb", "mkfs.ext4"))
    return str(bin_dir)


def cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "-C", str(root), *args], capture_output=True, text=True,
                          env={**os.environ, "COSIGN_PASSWORD": "", **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    root = tmp_path_factory.mktemp("base-src")
    with local_registry(root / "registry") as reg:
        ws = workspace(root / "ws", reg, None)
        write_key_pair(ws / "cosign.key", ws / "cosign.pub", b"")
        proc = cli(ws, "push", "base", f"{reg.address}/cloudboot/base:1", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        yield Pushed(reg, ws, f"{reg.address}/cloudboot/base@{result['digest']}")


def mac_env(root: Path) -> dict[str, str]:
    cache = root / "empty-cache"
    cache.mkdir(exist_ok=True)
    return {"PATH": mac_path(root), "XDG_CACHE_HOME": str(cache)}


def test_push_base_is_a_signed_multi_arch_index(pushed: Pushed) -> None:
    client = RegistryClient()
    ref = parse_ref(pushed.ref)
    data, _, _ = client.get_manifest(ref)
    index = Index.from_bytes(data, what="base")
    assert sorted(m.platform.architecture for m in index.manifests if m.platform) == [
        "amd64", "arm64",
    ]  # fmt: skip
    for entry in index.manifests:
        manifest = Manifest.from_bytes(client.get_manifest(ref.with_digest(entry.digest))[0])
        kinds = {layer.media_type for layer in manifest.layers}
        assert MEDIA_PACKAGE in kinds and MEDIA_DEMO_DISK in kinds
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{pushed.ref}"]
    skopeo = subprocess.run(argv, capture_output=True, check=True)
    assert skopeo.stdout == data


def test_build_and_demo_disk_without_debian_tools(pushed: Pushed, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "mac", pushed.registry, pushed.ref)
    shutil.copy(pushed.workspace / "cosign.pub", ws / "cosign.pub")
    env = mac_env(tmp_path)
    proc = cli(ws, "build", "--arch", "x86_64", "--no-sign", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    iso = Path(json.loads(proc.stdout)["output"])
    with iso.open("rb") as image:
        assert len(read_gpt(image).partitions) == 1  # the ESP with the UKI
    # nothing came from apt (no package cache) or PyPI (the guest packs none)
    cache = tmp_path / "empty-cache" / "cloudboot"
    assert not (cache / "debs").exists() and not (cache / "wheels").exists()
    # the same initramfs as apt + dpkg-deb give on this host
    code = (
        "import hashlib, json, sys; from pathlib import Path; from guest.contract.arch import Arch;"
        "from publisher.media.recipe import load_recipe; from publisher.media.build import "
        "resolve_arch; from publisher.media.initramfs import initramfs_entries;"
        "from publisher.media.base import packages_for; r = load_recipe(Path(sys.argv[1]));"
        "src = packages_for(r.base, r.cosign_public_key);"
        "i = resolve_arch(r.for_arch(Arch.X86_64), r, src, None, False);"
        "e = initramfs_entries(r, Arch.X86_64, i.kernel, i.busybox, i.pack);"
        "print(json.dumps({x.path: [x.mode, hashlib.sha256(x.data or b'').hexdigest()] "
        "for x in e}))"
    )
    trees = []
    for recipe, extra in (
        (ws / "kernel/recipe.toml", env),
        (pushed.workspace / "kernel/recipe.toml", {}),
    ):
        proc = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True,
                              text=True, env={**os.environ, **extra})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        trees.append(json.loads(proc.stdout.splitlines()[-1]))  # after any log lines
    assert "/usr/lib/cloudboot/dataclass-code.marshal" in trees[0]  # the pack-time cache too
    assert trees[0] == trees[1]
    # the demo target disk comes out of the base too: no mkfs.ext4 anywhere
    code = (
        "from pathlib import Path; from guest.contract.arch import Arch;"
        "from publisher.media.base import BasePackages;"
        "from publisher.demodisk import ensure_demo_disk;"
        f"b = BasePackages({pushed.ref!r}, Path({str(ws / 'cosign.pub')!r}));"
        f"d = ensure_demo_disk(Path({str(tmp_path / 'demo.raw')!r}), Arch.X86_64, cache=b);"
        "print(d.kernel_release)"
    )
    demo = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.strip().endswith("cloud-amd64")
    assert (tmp_path / "demo.raw").read_bytes()[1080:1082] == b"\x53\xef"  # ext4 magic


def refused(pushed: Pushed, tmp_path: Path, base: str) -> str:
    ws = workspace(tmp_path / "ws", pushed.registry, base)
    shutil.copy(pushed.workspace / "cosign.pub", ws / "cosign.pub")
    proc = cli(ws, "build", "--arch", "x86_64", "--no-sign", env=mac_env(tmp_path))
    assert proc.returncode != 0 and not (ws / "build" / "boot.iso").exists()
    return proc.stderr


def test_unsigned_or_foreign_signed_base_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    digest = pushed.ref.rpartition("@")[2]
    copy = f"{pushed.registry.address}/other/base"
    subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                    "--dest-tls-verify=false", f"docker://{pushed.ref}",
                    f"docker://{copy}:1"], check=True, capture_output=True)  # fmt: skip
    err = refused(pushed, tmp_path / "unsigned", f"{copy}@{digest}")
    assert "refusing the base artifact" in err and "no signature" in err
    private_pem, _ = generate_key_pair(b"")
    sign_ref(RegistryClient(), parse_ref(f"{copy}@{digest}"), parse_private_key(private_pem, b""))
    err = refused(pushed, tmp_path / "foreign", f"{copy}@{digest}")
    assert "refusing the base artifact" in err and "signature" in err


def test_a_layer_unpacked_meanwhile_by_another_build_is_kept(tmp_path: Path) -> None:
    """Two builds at once with a cold cache (two canaries on a Mac, or `cloudboot build`
    beside the watcher) unpack the same base layer into the one per-user cache. The later
    one must not remove the tree the earlier one finished and may be reading: a layer is
    addressed by its digest, so the tree already there holds the same files."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w:gz") as tar:
        info = tarfile.TarInfo("usr/lib/file")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"data"))
    target = tmp_path / "x" / "0123abcd"
    unpack_tar(layer.getvalue(), target, "layer")
    reading = (target / "usr/lib/file").open("rb")  # the first build, still reading
    inode = target.stat().st_ino
    unpack_tar(layer.getvalue(), target, "layer")  # the second build, done later
    assert target.stat().st_ino == inode and (target / "usr/lib/file").read_bytes() == b"data"
    assert reading.read() == b"data" and (target / "usr/lib/file").exists()
    reading.close()
    assert sorted(p.name for p in target.parent.iterdir()) == ["0123abcd"]  # no temp left


def test_altered_blob_in_the_registry_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    """Last in this module: it damages a layer in the registry's storage."""
    client = RegistryClient()
    ref = parse_ref(pushed.ref)
    index = Index.from_bytes(client.get_manifest(ref)[0], what="base")
    amd64 = next(m for m in index.manifests if m.platform and m.platform.architecture == "amd64")
    manifest = Manifest.from_bytes(client.get_manifest(ref.with_digest(amd64.digest))[0])
    layer = next(d for d in manifest.layers if d.media_type == MEDIA_PACKAGE)
    hexpart = layer.digest.partition(":")[2]
    data = pushed.registry.storage / f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    err = refused(pushed, tmp_path, pushed.ref)
    assert layer.digest in err


def test_recipe_base_must_be_pinned(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    arch = "[arch.x86_64]\n"
    with pytest.raises(RecipeError, match=r"recipe.toml:2: base.oci: .* is not pinned"):
        parse_recipe(f'[base]\noci = "127.0.0.1:5000/b:1"\n{arch}', path)
    with pytest.raises(RecipeError, match=r"base.ref: unknown key; known: oci"):
        parse_recipe(f'[base]\nref = "x"\n{arch}', path)
    pinned = f"127.0.0.1:5000/b@sha256:{'a' * 64}"
    assert parse_recipe(f'[base]\noci = "{pinned}"\n{arch}', path).base == pinned
    with pytest.raises(BaseError, match=r"verified with signing\.cosign_public_key"):
        BasePackages(pinned, None)
