"""Extra artifact layers (modloop, apkovl, squashfs) as upstream recognises them
(docs/wire-formats.md §2.3, §2.4): recognised by media type or, for media types that name
no role, by title; published by `cloudboot push artifact` (also for riscv64) to the real
docker-registry, read back with skopeo; pulled by the guest's registry client, whose
modloop URL serves the modloop's bytes and whose initrd carries ``/apkovl.tar.gz``, read
back by GNU cpio."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from guest.agent import fetch, pulls
from guest.agent.layers import APKOVL_PATH, Extras, apkovl_archive
from guest.contract import oci
from guest.contract.arch import artifact_arch
from publisher.localregistry import RunningRegistry
from publisher.run import run
from tests.test_push import skopeo_raw

BIN = Path(sys.executable).parent
CONFIG = oci.Descriptor.for_bytes(oci.MEDIA_CONFIG, b"{}")


def _layer(media_type: str, title: str | None, data: bytes = b"x") -> oci.Descriptor:
    return oci.Descriptor.for_bytes(
        media_type, data, {oci.ANNOTATION_TITLE: title} if title else None
    )


@pytest.mark.parametrize(
    ("media_type", "title", "role"),
    [
        (oci.MEDIA_MODLOOP, None, oci.LayerRole.MODLOOP),
        (oci.MEDIA_APKOVL, "anything", oci.LayerRole.APKOVL),
        (oci.MEDIA_SQUASHFS, None, oci.LayerRole.SQUASHFS),
        ("application/octet-stream", "modloop-virt", oci.LayerRole.MODLOOP),
        ("application/x-squashfs", "filesystem.squashfs", oci.LayerRole.SQUASHFS),
        ("application/vnd.example.whatever", "apkovl", oci.LayerRole.APKOVL),
        ("application/octet-stream", "kernel", oci.LayerRole.KERNEL),
        ("application/octet-stream", "initramfs", oci.LayerRole.INITRD),
    ],
)
def test_roles_by_media_type_or_title(
    media_type: str, title: str | None, role: oci.LayerRole
) -> None:
    manifest = oci.Manifest(CONFIG, (_layer(media_type, title),))
    assert manifest.find_layer(role) is not None
    others = [r for r in oci.ARTIFACT_ROLES if r is not role]
    assert [r for r in others if manifest.find_layer(r)] == []


def test_a_role_media_type_is_never_reread_by_its_title() -> None:
    # a kernel layer titled "modloop" is a kernel, not a modloop
    manifest = oci.Manifest(CONFIG, (_layer(oci.MEDIA_KERNEL, "modloop"),))
    assert manifest.find_layer(oci.LayerRole.MODLOOP) is None
    assert manifest.find_layer(oci.LayerRole.KERNEL) is not None


def test_cmdline_gains_what_the_layers_need_unless_already_set() -> None:
    extras = Extras("http://r/v2/a/blobs/sha256:1", "http://r/v2/a/blobs/sha256:2", b"ovl")
    assert extras.cmdline("console=ttyS0") == (
        "console=ttyS0 modloop=http://r/v2/a/blobs/sha256:1 apkovl=/apkovl.tar.gz"
        " boot=live fetch=http://r/v2/a/blobs/sha256:2"
    )
    assert extras.cmdline("") == extras.cmdline("").strip()
    set_already = "modloop=/x apkovl=/y fetch=/z"
    assert extras.cmdline(set_already) == set_already
    assert Extras().cmdline("quiet") == "quiet"
    assert Extras().initrd(b"abc") == b"abc"


def test_apkovl_archive_read_by_gnu_cpio(tmp_path: Path) -> None:
    overlay = os.urandom(3001)
    archive = apkovl_archive(overlay)
    assert archive == apkovl_archive(overlay)  # no timestamps: the same bytes every time
    listing = run(["cpio", "-itv"], input=gzip.decompress(archive)).stdout.decode()
    assert listing.split()[0] == "-rw-r--r--" and listing.split()[-1] == "apkovl.tar.gz"
    run(["cpio", "-idm", "--quiet"], input=gzip.decompress(archive), cwd=tmp_path)
    assert (tmp_path / APKOVL_PATH.lstrip("/")).read_bytes() == overlay


def test_apkovl_joins_an_initrd_the_way_the_kernel_reads_it(tmp_path: Path) -> None:
    first = gzip.compress(b"not a multiple of four")
    joined = Extras(apkovl=b"ovl").initrd(first)
    tail = joined[len(first) :].lstrip(b"\0")
    assert joined[len(first) :][: -len(tail)] == bytes(-len(first) % 4)
    assert gzip.decompress(tail).startswith(b"070701")


def test_artifact_arches() -> None:
    assert [artifact_arch(a) for a in ("x86_64", "aarch64", "riscv64", "RISCV")] == [
        "amd64",
        "arm64",
        "riscv64",
        "riscv64",
    ]
    with pytest.raises(ValueError, match="riscv64"):
        artifact_arch("mips")


def _push(
    registry: RunningRegistry, tmp_path: Path, ref: str, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [BIN / "cloudboot", "push", "artifact", f"{registry.address}/{ref}", *extra, "--json"],
        capture_output=True,
        cwd=tmp_path,
        check=False,
    )


def test_push_alpine_shaped_artifact_and_pull_it_in_the_guest(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    sizes = {"vmlinuz": 90_000, "initramfs": 30_001, "modloop": 70_000, "ovl.tar.gz": 2_000}
    files = {name: os.urandom(size) for name, size in sizes.items()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = _push(registry, tmp_path, "alpine/virt:3.20", "--platform", "linux/riscv64",
                 "--kernel", "vmlinuz", "--initrd", "initramfs", "--modloop", "modloop",
                 "--apkovl", "ovl.tar.gz", "--cmdline", "console=ttyS0")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    raw = skopeo_raw(registry, "alpine/virt:3.20")
    assert [(x["mediaType"], x["annotations"][oci.ANNOTATION_TITLE]) for x in raw["layers"]] == [
        ("application/vnd.cloud-boot.kernel.v1", "vmlinuz"),
        ("application/vnd.cloud-boot.initrd.v1", "initrd"),
        ("application/vnd.cloud-boot.modloop.v1+squashfs", "modloop"),
        ("application/vnd.cloud-boot.apkovl.v1+tar.gz", "apkovl"),
        ("application/vnd.cloud-boot.cmdline.v1", "cmdline"),
    ]
    config = requests.get(
        f"{registry.url}/v2/alpine/virt/blobs/{raw['config']['digest']}", timeout=5
    )
    assert json.loads(config.content)["architecture"] == "riscv64"

    client = fetch.RegistryClient()
    ref = oci.parse_ref(f"{registry.address}/alpine/virt:3.20")
    boot = pulls.pull_boot(client, [ref], "riscv64")
    assert boot.kernel == files["vmlinuz"]
    assert boot.extras.apkovl == files["ovl.tar.gz"]
    modloop_url = boot.extras.modloop_url or ""
    assert modloop_url == f"{registry.url}/v2/alpine/virt/blobs/{raw['layers'][2]['digest']}"
    assert requests.get(modloop_url, timeout=5).content == files["modloop"]  # the target's wget
    assert boot.extras.squashfs_url is None
    assert boot.initrd.startswith(files["initramfs"])
    out = tmp_path / "unpacked"
    out.mkdir()
    tail = boot.initrd[len(files["initramfs"]) :].lstrip(b"\0")
    run(["cpio", "-idm", "--quiet"], input=gzip.decompress(tail), cwd=out)
    assert (
        hashlib.sha256((out / "apkovl.tar.gz").read_bytes()).digest()
        == hashlib.sha256(files["ovl.tar.gz"]).digest()
    )
    assert boot.extras.cmdline(boot.cmdline or "") == (
        f"console=ttyS0 modloop={modloop_url} apkovl=/apkovl.tar.gz"
    )


def test_push_live_squashfs_by_title_only_is_recognised(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"k" * 1000)
    (tmp_path / "filesystem.squashfs").write_bytes(b"s" * 5000)
    done = _push(registry, tmp_path, "debian/live:12", "--kernel", "vmlinuz",
                 "--squashfs", "filesystem.squashfs")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    boot = pulls.pull_boot(
        fetch.RegistryClient(), [oci.parse_ref(f"{registry.address}/debian/live:12")], "amd64"
    )
    assert boot.extras.squashfs_url and boot.extras.cmdline("quiet").startswith(
        "quiet boot=live fetch=http://"
    )
    assert requests.get(boot.extras.squashfs_url, timeout=5).content == b"s" * 5000


def test_push_artifact_refuses_a_missing_extra_and_an_unknown_arch(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"k" * 100)
    missing = _push(registry, tmp_path, "a/b:1", "--kernel", "vmlinuz", "--modloop", "nope")
    assert missing.returncode != 0 and b"nope" in missing.stderr
    mips = _push(registry, tmp_path, "a/b:1", "--kernel", "vmlinuz", "--platform", "linux/mips")
    assert mips.returncode != 0 and b"mips" in mips.stderr
    tags = requests.get(f"{registry.url}/v2/a/b/tags/list", timeout=5)
    assert tags.status_code == 404  # nothing was published
