"""kernel = { oci = REF }: the Debian cloud kernel pushed as an artifact, built into boot.iso.

Everything real: `cloudboot push artifact` into docker-registry, `cloudboot build` in a
subprocess with its own per-user cache, the UKI taken out of the ISO with mtools and its
sections read back. The Debian package cache is shared (symlinked) so nothing downloads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.gpt import SECTOR, read_gpt
from guest.contract.oci import (
    ANNOTATION_TITLE,
    MEDIA_CONFIG,
    Descriptor,
    Manifest,
    canonical_json,
    digest_of,
    parse_ref,
)
from publisher.blob import Blob
from publisher.localregistry import RunningRegistry, local_registry
from publisher.media import cpio, kmods
from publisher.media.debs import DebCache, default_cache_dir
from publisher.media.ocicache import OciCache, OciKernelError, safe_member
from publisher.media.ocikernel import OciKernelPuller, bzimage_release, module_releases
from publisher.media.pe import section_data
from publisher.media.recipe import DEFAULT_MODULES
from publisher.registry import RegistryClient
from publisher.run import run
from publisher.signing import generate_key_pair
from tests.qemu_boot import recipe_text

CLI = Path(sys.executable).parent / "cloudboot"
PASSWORD = "kernel-test-pw"


class DebianKernel:
    """The Debian cloud kernel (amd64) from the deb cache, plus a modules cpio.gz of the
    recipe's modules and their dependencies."""

    def __init__(self, workdir: Path) -> None:
        pkg = DebCache().kernel_package("linux-image-cloud-amd64", Arch.X86_64)
        self.vmlinuz = max((pkg.root / "boot").glob("vmlinuz-*"))
        self.uname = self.vmlinuz.name.removeprefix("vmlinuz-")
        self.modules_root = pkg.root / "lib" / "modules" / self.uname
        available = kmods.index_modules(self.modules_root)
        order = kmods.resolve(DEFAULT_MODULES, available, kmods.builtin_modules(self.modules_root))
        self.module_files = {
            f"/lib/modules/{self.uname}/{available[m].relative_to(self.modules_root)}": available[
                m
            ].read_bytes()
            for m in order
        }
        entries = [cpio.file(path, data) for path, data in self.module_files.items()]
        builtin = self.modules_root / "modules.builtin"
        entries.append(
            cpio.file(f"/lib/modules/{self.uname}/modules.builtin", builtin.read_bytes())
        )
        self.modules = workdir / "modules.cpio.gz"
        self.modules.write_bytes(
            cpio.compress(cpio.newc(cpio.with_parents(entries)), cpio.Compression.GZIP)
        )


@pytest.fixture(scope="module")
def debian_kernel(tmp_path_factory: pytest.TempPathFactory) -> DebianKernel:
    return DebianKernel(tmp_path_factory.mktemp("debian-kernel"))


class Workspace:
    """A workspace whose recipe takes the x86_64 kernel from ``ref``, with its own caches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "kernel").mkdir(parents=True, exist_ok=True)
        (root / "cloudboot.toml").write_text("[registry]\nretry_seconds = 1\n")
        cache = root / "xdg-cache"
        (cache / "cloudboot").mkdir(parents=True, exist_ok=True)
        debs = cache / "cloudboot" / "debs"
        if not debs.exists():
            debs.symlink_to(default_cache_dir())
        self.env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COSIGN_PASSWORD": PASSWORD}
        self.oci_cache = cache / "cloudboot" / "oci"
        self.iso = root / "boot.iso"
        key_pair(root)  # the recipe's ../cosign.pub: a build without it fails closed

    def recipe(self, ref: str, *, verify: bool = False, extra: str = "") -> None:
        text = recipe_text()
        option = "" if verify else ", verify = false"  # verified unless opted out
        text, count = re.subn(
            r'(?m)^kernel = \{ deb = "linux-image-cloud-amd64" \}.*$',
            f'kernel = {{ oci = "{ref}"{option} }}\n{extra}',
            text,
        )
        assert count == 1
        (self.root / "kernel" / "recipe.toml").write_text(text)

    def cli(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(CLI), "-C", str(self.root), *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def push(self, ref: str, kernel: DebianKernel, *, key: Path | None = None) -> str:
        args: list[str | Path] = [
            "push",
            "artifact",
            ref,
            "--platform",
            "linux/amd64",
            "--kernel",
            kernel.vmlinuz,
            "--modules",
            kernel.modules,
        ]
        if key:
            args += ["--key", key]
        return str(json.loads(self.cli(*args, "--json").stdout)["digest"])

    def build(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "build",
            "--arch",
            "x86_64",
            "--iso",
            self.iso,
            "--no-sign",
            "--json",
            *extra,
            check=check,
        )

    def uki(self) -> bytes:
        """BOOTX64.EFI out of the ISO's ESP (GPT partition), read with mtools."""
        data = self.iso.read_bytes()
        (esp,) = read_gpt(data[: 34 * SECTOR]).partitions
        part = self.root / "esp.img"
        part.write_bytes(data[esp.first_lba * SECTOR : (esp.last_lba + 1) * SECTOR])
        out = self.root / "BOOTX64.EFI"
        out.unlink(missing_ok=True)
        run(["mcopy", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", out])
        return out.read_bytes()


def key_pair(directory: Path) -> tuple[Path, Path]:
    private_pem, public_pem = generate_key_pair(PASSWORD.encode())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cosign.key").write_bytes(private_pem)
    (directory / "cosign.pub").write_bytes(public_pem)
    return directory / "cosign.key", directory / "cosign.pub"


def test_boot_iso_from_kernel_artifact_then_offline(
    tmp_path: Path, debian_kernel: DebianKernel
) -> None:
    ws = Workspace(tmp_path / "ws")
    with local_registry(tmp_path / "registry") as reg:
        ref = f"{reg.address}/kernels/cloud:6.1"
        digest = ws.push(ref, debian_kernel)
        ws.recipe(ref)
        first = json.loads(ws.build().stdout)
        assert not first["skipped"]
        uki = ws.uki()
        pushed = debian_kernel.vmlinuz.read_bytes()
        linux = section_data(uki, ".linux")  # file-aligned: the kernel, then zero padding
        assert linux[: len(pushed)] == pushed and not linux[len(pushed) :].strip(b"\0")
        assert section_data(uki, ".uname").decode() == debian_kernel.uname
        initrd = {
            e.path: e.data for e in cpio.parse_newc(cpio.decompress(section_data(uki, ".initrd")))
        }
        for path, data in debian_kernel.module_files.items():
            assert initrd[path] == data, path  # modules came out of the artifact's layer
        assert (ws.oci_cache / "blobs" / "sha256" / digest.split(":")[1]).is_file()
        good = ws.iso.read_bytes()
        assert json.loads(ws.build().stdout)["skipped"]  # tag re-resolved, same digest
    # registry gone: a tag cannot be resolved online ...
    down = ws.build("--force", check=False)
    assert down.returncode != 0
    assert "--offline would use its last resolved digest " + digest in down.stderr
    # ... but --offline uses the digest it had, and says so in the log
    offline = ws.build("--offline", "--force")
    assert "offline: using the digest the tag had when last resolved" in offline.stderr
    assert digest in offline.stderr
    assert ws.iso.read_bytes() == good
    # a digest-pinned ref needs no network at all once its blobs are cached
    ws.recipe(f"{reg.address}/kernels/cloud@{digest}")
    pinned = json.loads(ws.build().stdout)
    assert not pinned["skipped"]  # the recipe text changed ...
    assert ws.iso.read_bytes() == good  # ... the image did not


def test_tampered_blob_fails_naming_ref_and_digest(
    tmp_path: Path, registry: RunningRegistry, debian_kernel: DebianKernel
) -> None:
    ws = Workspace(tmp_path / "ws")
    ref = f"{registry.address}/kernels/tampered:1"
    ws.push(ref, debian_kernel)
    kernel_digest = digest_of(debian_kernel.vmlinuz.read_bytes())
    hexpart = kernel_digest.split(":")[1]
    (blob,) = registry.storage.rglob(f"blobs/sha256/{hexpart[:2]}/{hexpart}/data")
    data = bytearray(blob.read_bytes())
    data[4096] ^= 0xFF  # same size, one byte different: only the digest can tell
    blob.write_bytes(bytes(data))
    ws.recipe(ref)
    proc = ws.build(check=False)
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: arch.x86_64.kernel: ")
    assert ref in error and f"kernel layer {kernel_digest}" in error
    assert "does not match" in error
    assert not ws.iso.exists()
    assert not (ws.oci_cache / "blobs" / "sha256" / hexpart).exists()  # nothing bad cached


def test_oci_kernel_is_verified_by_default(
    tmp_path: Path, registry: RunningRegistry, debian_kernel: DebianKernel
) -> None:
    """No ``verify`` key: the signature is checked; an unsigned or foreign-signed artifact
    fails the build naming it, and so does a recipe without a key to check with."""
    ws = Workspace(tmp_path / "ws")
    key, _ = key_pair(ws.root)  # ws/cosign.pub: the recipe's signing.cosign_public_key
    signed = f"{registry.address}/kernels/signed:1"
    unsigned = f"{registry.address}/kernels/unsigned:1"
    digest = ws.push(signed, debian_kernel, key=key)
    ws.push(unsigned, debian_kernel)
    ws.recipe(signed, verify=True)
    proc = ws.build()
    assert "kernel artifact signature verified" in proc.stderr
    ws.recipe(unsigned, verify=True)
    proc = ws.build(check=False)
    assert proc.returncode != 0 and "no signature" in proc.stderr and unsigned in proc.stderr
    # another key: the signature exists but does not verify
    key_pair(ws.root / "other")
    (ws.root / "cosign.pub").write_bytes((ws.root / "other" / "cosign.pub").read_bytes())
    ws.recipe(signed, verify=True)
    proc = ws.build("--force", check=False)
    assert proc.returncode != 0
    assert f"signature check of {digest}" in proc.stderr
    # no key configured at all: verifying by default cannot be done, so it is an error
    recipe = ws.root / "kernel" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('cosign_public_key = "../cosign.pub"', ""))
    proc = ws.build("--force", check=False)
    assert proc.returncode != 0
    assert "verify = false for an unsigned artifact" in proc.stderr, proc.stderr


def test_index_resolves_the_arch_and_generic_layers_are_found_by_title(
    tmp_path: Path, registry: RunningRegistry, debian_kernel: DebianKernel
) -> None:
    """A hand-made manifest: generic layer types, titles only, uname in the config."""
    client = RegistryClient()
    kernel = debian_kernel.vmlinuz.read_bytes()
    modules = debian_kernel.modules.read_bytes()
    config = canonical_json({"architecture": "amd64", "os": "linux", "uname": "6.1.0-stated"})
    generic = "application/octet-stream"
    layers = (
        Descriptor.for_bytes(generic, kernel, {ANNOTATION_TITLE: "vmlinuz"}),
        Descriptor.for_bytes(generic, modules, {ANNOTATION_TITLE: "modules"}),
    )
    manifest = Manifest(Descriptor.for_bytes(MEDIA_CONFIG, config), layers)
    ref = parse_ref(f"{registry.address}/kernels/generic:1")
    for data in (config, kernel, modules):
        client.push_blob(ref, Blob.of_bytes(data))
    client.put_manifest(ref, bytes(manifest), manifest.media_type, "1")
    ws = Workspace(tmp_path / "ws")
    index_ref = f"{registry.address}/kernels/generic:multi"
    ws.cli("push", "index", index_ref, "-p", f"linux/amd64={ref}")
    puller = OciKernelPuller(OciCache(tmp_path / "oci"), RegistryClient)
    # the config says 6.1.0-stated, the modules layer holds the Debian release: refuse
    with pytest.raises(OciKernelError, match=r"modules layer has no lib/modules/6.1.0-stated"):
        puller.pull(index_ref, Arch.X86_64, what="k")
    pulled = puller.pull(index_ref, Arch.X86_64, what="k", uname=debian_kernel.uname)
    assert pulled.manifest_digest == manifest.digest and pulled.digest != manifest.digest
    assert pulled.vmlinuz.read_bytes() == kernel
    assert (
        pulled.modules_dir
        == tmp_path
        / "oci"
        / "modules"
        / layers[1].digest[7:]
        / "lib"
        / ("modules")
        / debian_kernel.uname
    )
    no_modules = puller.pull(index_ref, Arch.X86_64, what="k", want_modules=False)
    assert no_modules.uname == "6.1.0-stated" and no_modules.modules_dir is None
    with pytest.raises(OciKernelError, match=r"index has no manifest for linux/arm64"):
        puller.pull(index_ref, Arch.AARCH64, what="k")


def test_pure_helpers(debian_kernel: DebianKernel) -> None:
    assert bzimage_release(debian_kernel.vmlinuz.read_bytes()) == debian_kernel.uname
    assert bzimage_release(b"MZ" + bytes(1000)) is None
    assert module_releases(
        ["/lib/modules/6.1/kernel/a.ko", "usr/lib/modules/6.2/x", "lib/modules", "etc/x"]
    ) == {"6.1": "lib/modules/6.1", "6.2": "usr/lib/modules/6.2"}
    assert safe_member("/lib/../../etc/passwd") is None and safe_member("/") is None
    assert str(safe_member("/lib/modules/x")) == "lib/modules/x"
