"""build_boot_iso: reproducible bytes, incremental no-op, atomic replace, cosign signature."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import locked
from guest.contract.gpt import SECTOR, read_gpt
from publisher.media import cpio
from publisher.media.build import (
    build_boot_iso,
    builder_code,
    cache_dir,
    publish_lock,
    stamp_path,
)
from publisher.media.guestpack import pack_inputs
from publisher.media.recipe import RecipeError, load_recipe, parse_recipe
from publisher.run import run
from publisher.signing import generate_key_pair, parse_private_key
from tests.helpers import REPO, wait_for
from tests.qemu_boot import build, recipe_text, repo_recipe


def _build_in_process(workspace: Path, out: Path, *, seed: str, umask: int,
                      epoch: str = "1700000000") -> bytes:  # fmt: skip
    """``cloudboot build`` as a user runs it: its own process, hash seed, umask and cwd."""
    out.parent.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "PYTHONHASHSEED": seed}
    proc = subprocess.run(
        [Path(sys.executable).parent / "cloudboot", "-C", workspace, "build", "--arch",
         "x86_64", "--force", "--no-sign", "--iso", out],
        env=env, cwd=out.parent, capture_output=True, text=True,
        preexec_fn=lambda: os.umask(umask),  # no threads started here
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def _two_builds_same_bytes(tmp_path: Path, init: str) -> bytes:
    workspace = tmp_path / "ws"
    (workspace / "kernel").mkdir(parents=True)
    (workspace / "kernel" / "recipe.toml").write_text(recipe_text(init))
    (workspace / "cosign.pub").write_bytes(generate_key_pair(b"pw")[1])  # the recipe names it
    a = _build_in_process(workspace, tmp_path / "a" / "boot.iso", seed="1", umask=0o022)
    b = _build_in_process(workspace, tmp_path / "b" / "deeper" / "x.iso", seed="2", umask=0o077)
    if a != b:
        first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        pytest.fail(f"two builds differ from byte {first} (MiB {first >> 20}) on")
    return a


def test_two_processes_same_bytes(tmp_path: Path) -> None:
    """busybox-marker init: the same inputs give the same bytes in any process and output
    path; another SOURCE_DATE_EPOCH gives other bytes."""
    same = _two_builds_same_bytes(tmp_path, "busybox-marker")
    other = _build_in_process(tmp_path / "ws", tmp_path / "c" / "boot.iso", seed="1",
                              umask=0o022, epoch="1700000002")  # fmt: skip
    assert other != same


@pytest.mark.slow  # packs the Python runtime twice (~10 s per build)
def test_two_processes_same_bytes_guest_agent(tmp_path: Path) -> None:
    """The guest-agent init: bytecode, the dataclass code cache and the packed tree's
    modes all come out the same in another process."""
    _two_builds_same_bytes(tmp_path, "guest-agent")


def test_incremental_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "boot.iso"
    first = build(out, [Arch.X86_64])
    assert not first.skipped and stamp_path(out).is_file()
    inode = out.stat().st_ino
    again = build(out, [Arch.X86_64])
    assert again.skipped and out.stat().st_ino == inode
    changed = build(out, [Arch.X86_64], cmdline="console=ttyS0 other")
    assert not changed.skipped and out.stat().st_ino != inode  # replaced by rename
    # a failing build leaves the previous image in place and no temp file behind
    good = out.read_bytes()
    recipe = repo_recipe()
    broken = tmp_path / "recipe.toml"
    text = recipe_text().replace("../cosign.pub", "")
    text = text.replace('modules = ["virtio_pci"', 'modules = ["no_such_module", "virtio_pci"')
    broken.write_text(text)
    with pytest.raises(CloudbootError, match="no_such_module"):
        build_boot_iso(load_recipe(broken), out, [Arch.X86_64])
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert recipe.for_arch(Arch.X86_64).console == "ttyS0"


def test_cmdline_edit_reuses_the_initramfs_and_gives_a_full_builds_bytes(tmp_path: Path) -> None:
    """A cmdline-only edit takes each arch's initramfs from the cache, and the image is the
    one a full build of the same inputs makes; an initramfs input edit is not reused."""
    out = tmp_path / "ws" / "boot.iso"
    assert build(out, [Arch.X86_64]).reused == []
    edited = build(out, [Arch.X86_64], cmdline="console=ttyS0 edited=1")
    assert edited.reused == ["initramfs-x86_64"] and not edited.skipped
    full = build(tmp_path / "full" / "boot.iso", [Arch.X86_64], cmdline="console=ttyS0 edited=1",
                 force=True)  # fmt: skip
    assert full.reused == []
    assert out.read_bytes() == full.output.read_bytes()
    # an edit to a file that goes into the initramfs: a new one, not the cached one
    extra = tmp_path / "motd"
    extra.write_text("one\n")
    recipe = parse_recipe(recipe_text() + f'\n[[initramfs.files]]\nsrc = "{extra}"\n'
                          'dest = "/etc/motd"\n', REPO / "kernel" / "recipe.toml")  # fmt: skip
    recipe = dataclasses.replace(recipe, cosign_public_key=None)
    assert build_boot_iso(recipe, out, [Arch.X86_64]).reused == []
    extra.write_text("two\n")
    os.utime(extra, ns=(1, 1))
    rebuilt = build_boot_iso(recipe, out, [Arch.X86_64])
    assert rebuilt.reused == [] and b"two\n" in cpio.decompress(_initrd_of(out, tmp_path))
    # a cache entry whose bytes do not match its name is a miss, never a wrong image
    for entry in cache_dir(out).iterdir():
        entry.write_bytes(entry.read_bytes()[:-1] + b"x")
    assert build_boot_iso(recipe, out, [Arch.X86_64], cmdline="console=ttyS0 x=2").reused == []


def _uki_of(iso: Path, work: Path) -> Path:
    """The x86_64 UKI on a boot.iso, read back with mtools from its ESP."""
    data = iso.read_bytes()
    (esp,) = read_gpt(data[: 34 * SECTOR]).partitions
    part = work / "esp.img"
    part.write_bytes(data[esp.first_lba * SECTOR : (esp.last_lba + 1) * SECTOR])
    uki = work / "BOOTX64.EFI"
    uki.unlink(missing_ok=True)
    run(["mcopy", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", uki])
    return uki


def _initrd_of(iso: Path, work: Path) -> bytes:
    """The .initrd section of the x86_64 UKI on a boot.iso (read back with pefile)."""
    import pefile

    pe = pefile.PE(data=_uki_of(iso, work).read_bytes())
    section = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".initrd")
    return bytes(section.get_data()[: section.Misc_VirtualSize])


def test_signature_verifies_as_cosign_blob(tmp_path: Path) -> None:
    private_pem, public_pem = generate_key_pair(b"pw")
    key = parse_private_key(private_pem, b"pw")
    result = build(tmp_path / "boot.iso", [Arch.X86_64], signing_key=key)
    assert result.signature is not None and result.signature.name == "boot.iso.sig"
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(result.signature.read_text()), result.output.read_bytes(),
                  ec.ECDSA(hashes.SHA256()))  # fmt: skip
    # and through our own CLI's verify-blob
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(public_pem)
    cli = Path(sys.executable).parent / "cloudboot"
    ok = subprocess.run([cli, "verify-blob", "--key", pub, "--signature", result.signature,
                         result.output], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[arch.x86_64]\nkernel = { oci = "no-registry" }\n',
         r"recipe.toml:2: arch.x86_64.kernel.oci: invalid ref"),
        ('[arch.x86_64]\nkernel = { oci = "r.io/k:1", config = "x" }\n',
         r"arch.x86_64.kernel.config: unknown key for a oci"),
        ('[arch.x86_64]\nkernel = { oci = "r.io/k:1", verify = "yes" }\n',
         r"arch.x86_64.kernel.verify: expected true or false"),
        ('[arch.x86_64]\nstub = { oci = "r.io/stub:1" }\n', r"arch.x86_64.stub.oci: only a kernel"),
        ('[arch.x86_64]\nkernel = { git = "x" }\n', r"arch.x86_64.kernel.git: unknown source kind"),
        ('[arch.x86_64]\nkernel = { build = "{tmp}/none" }\n',
         r"arch.x86_64.kernel.build: kernel source directory"),
        ('[arch.x86_64]\nkernel = { build = "{tmp}" }\n',
         r"arch.x86_64.kernel.config: file not found: .*amd64"),
        ('[arch.x86_64]\ncolour = "x"\n', r"recipe.toml:2: arch.x86_64.colour: unknown key;"),
        ('cmdline = "x"\n[initramfs]\ncompresion = "lz4"\n[arch.x86_64]\n',
         r"recipe.toml:3: initramfs.compresion: unknown key \(did you mean 'compression'\?\)"),
        ('cmdlin = "x"\n[arch.x86_64]\n', r"recipe.toml:1: cmdlin: unknown key \(did you mean"),
        ('[arch.x86_64]\n\nkernel = "x\n', r"recipe.toml:3: invalid TOML: "),
        ('[initramfs]\ninit = "systemd"\n[arch.x86_64]\n', r"initramfs.init: expected one of"),
        ("[arch.sparc]\n", r"arch.sparc: unknown architecture"),
    ],
)  # fmt: skip
def test_recipe_errors_name_file_line_and_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse_recipe(text.replace("{tmp}", str(tmp_path)), tmp_path / "recipe.toml")


def test_cli_build_prints_output_and_stage_times(tmp_path: Path) -> None:
    """Also fail closed: the recipe names ``../cosign.pub``; while it is missing (or not a
    key) the build stops with the key and the file named, and writes no image."""
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "recipe.toml").write_text(recipe_text())
    cli = [os.fspath(Path(sys.executable).parent / "cloudboot"), "-C", os.fspath(tmp_path)]
    build_cmd = [*cli, "build", "--arch", "x86_64", "--iso", tmp_path / "o.iso"]
    missing = subprocess.run(build_cmd, capture_output=True, text=True)
    assert missing.returncode != 0 and not (tmp_path / "o.iso").exists()
    assert f"signing.cosign_public_key = {tmp_path / 'cosign.pub'}" in missing.stderr
    assert re.search(r"kernel/recipe\.toml:\d+: signing\.cosign_public_key", missing.stderr)
    assert "No such file" in missing.stderr and "cloudboot key generate" in missing.stderr
    (tmp_path / "cosign.pub").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    wrong = subprocess.run(build_cmd, capture_output=True, text=True)
    assert wrong.returncode != 0 and not (tmp_path / "o.iso").exists()
    assert "not a public key cosign writes" in wrong.stderr, wrong.stderr
    (tmp_path / "cosign.pub").write_bytes(generate_key_pair(b"pw")[1])
    proc = subprocess.run(build_cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {tmp_path / 'o.iso'}")
    assert "uki-x86_64" in proc.stdout and " ms" in proc.stdout
    again = subprocess.run([*cli, "build", "--arch", "x86_64", "--iso", tmp_path / "o.iso"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert again.stdout.startswith("up to date")


def _repo_copy(tmp_path: Path) -> Path:
    """What the agent is packed from (``guest/``, and ``plans/`` which it no longer reads),
    in a copy a test may edit."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "guest", repo / "guest", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "plans", repo / "plans")
    return repo


def test_fingerprint_watches_what_the_packer_reads(tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path)
    files = {Path(f) for f in pack_inputs(Arch.X86_64, repo=repo, offline=True).files()}
    assert repo / "guest/agent/main.py" in files
    assert not {p for p in files if p.is_relative_to(repo / "plans")}  # no parser snapshot
    assert not {p for p in files if "__pycache__" in p.parts}
    code = {Path(p).relative_to(REPO).as_posix() for p in builder_code()}
    assert {"publisher/media/guestpack.py", "publisher/media/build.py",
            "guest/contract/gpt.py"} <= code  # fmt: skip


@pytest.mark.slow  # packs the Python runtime twice (~10 s per build)
def test_edit_under_guest_rebuilds(tmp_path: Path) -> None:
    """An edit in the agent's code makes the next build rebuild; no edit stays a no-op."""
    repo = _repo_copy(tmp_path)
    recipe, out = repo_recipe("guest-agent"), tmp_path / "boot.iso"
    assert not build_boot_iso(recipe, out, [Arch.X86_64], agent_repo=repo).skipped
    before = out.read_bytes()
    assert build_boot_iso(recipe, out, [Arch.X86_64], agent_repo=repo).skipped
    main = repo / "guest" / "agent" / "main.py"
    main.write_text(main.read_text() + "# edited\n")
    assert not build_boot_iso(recipe, out, [Arch.X86_64], agent_repo=repo).skipped
    assert out.read_bytes() != before


def test_secure_boot_signed_uki_verifies(tmp_path: Path) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
         "/CN=cloudboot test db/", "-days", "1", "-keyout", key, "-out", cert])  # fmt: skip
    text = recipe_text()
    text = (
        text.replace("../cosign.pub", "")
        .replace('# secureboot_key = "db.key"', f'secureboot_key = "{key}"')
        .replace('# secureboot_cert = "db.crt"', f'secureboot_cert = "{cert}"')
    )
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(text)
    out = build_boot_iso(load_recipe(recipe_path), tmp_path / "boot.iso", [Arch.X86_64]).output
    uki = _uki_of(out, tmp_path)
    assert "Signature verification OK" in run(["sbverify", "--cert", cert, uki]).stderr.decode() + \
        run(["sbverify", "--cert", cert, uki]).stdout.decode()  # fmt: skip


def _waiting_for_flock(pid: int) -> bool:
    """Whether ``pid`` is blocked on a flock(2): /proc/locks lists waiters as ``-> FLOCK``."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        at = fields.index("->") if "->" in fields else -1
        if at >= 0 and fields[at + 1] == "FLOCK" and fields[at + 4] == str(pid):
            return True
    return False


def test_builds_at_once_publish_image_and_signature_together(tmp_path: Path) -> None:
    """Two `cloudboot build` of one output with different inputs (two terminals, two CI
    jobs): each replaces boot.iso, .sig and stamp under one lock, so the signature beside
    the image is always that image's. Shown deterministically: while this test holds the
    lock, a real build process waits at it (the kernel lists it as a waiter) with the
    old image and signature untouched, then publishes both once it is released. An
    unsigned build then removes the .sig that would sign other bytes."""
    workspace = tmp_path / "ws"
    (workspace / "kernel").mkdir(parents=True)
    (workspace / "kernel" / "recipe.toml").write_text(recipe_text())
    private, public = generate_key_pair(b"pw")
    (workspace / "cosign.key").write_bytes(private)
    (workspace / "cosign.pub").write_bytes(public)
    out, sig = tmp_path / "o.iso", tmp_path / "o.iso.sig"
    cli = [os.fspath(Path(sys.executable).parent / "cloudboot"), "-C", os.fspath(workspace),
           "build", "--arch", "x86_64", "--iso", os.fspath(out)]  # fmt: skip
    env = {**os.environ, "COSIGN_PASSWORD": "pw"}
    subprocess.run([*cli, "--cmdline", "console=ttyS0 first"], env=env, check=True,
                   capture_output=True)  # fmt: skip

    def verifies() -> bool:
        key = serialization.load_pem_public_key(public)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(base64.b64decode(sig.read_text()), out.read_bytes(),
                       ec.ECDSA(hashes.SHA256()))  # fmt: skip
        except InvalidSignature:
            return False
        return True

    first = out.read_bytes()
    assert verifies()
    with locked(publish_lock(out)):
        child = subprocess.Popen([*cli, "--cmdline", "console=ttyS0 second"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        wait_for(lambda: _waiting_for_flock(child.pid) or child.poll() is not None,
                 timeout=120, what="the build to reach the publish lock")  # fmt: skip
        assert child.poll() is None, child.communicate()  # it waits: nothing published yet
        assert out.read_bytes() == first and verifies()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.read_bytes() != first and verifies()  # the new image, with its own signature
    subprocess.run([*cli, "--cmdline", "console=ttyS0 third", "--no-sign"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    assert not sig.exists()
