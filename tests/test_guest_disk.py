"""Disk targets: ext4 reads (images made by mkfs.ext4 -d), symlinks, default/pairing rules,
and device specs resolved through a sysfs-like tree whose device nodes are image files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from guest.agent.blockdev import DeviceNotFoundError, identify, resolve, scan
from guest.agent.diskread import DiskReadError, Ext4Reader
from guest.agent.disks.bootfiles import default_kernel, read_boot_files
from guest.agent.stage import DeviceRuns, FileData, MountedEsp
from guest.contract import gpt
from publisher.run import run

MIB = 1 << 20
FS_UUID = "3f1c2b7a-5d6e-4f80-9a1b-2c3d4e5f6a7b"


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "boot/vmlinuz-6.1.0-13-amd64": os.urandom(3 * MIB + 123),
        "boot/initrd.img-6.1.0-13-amd64": os.urandom(200_000),
        "boot/vmlinuz-6.1.0-9-amd64": os.urandom(5000),
        "boot/initramfs-6.1.0-9-amd64": os.urandom(4000),
        "boot/config-6.1.0-13-amd64": b"CONFIG_X=y\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with open(root / "boot/sparse", "wb") as f:  # a hole between two data runs
        f.write(b"head")
        f.seek(3 * MIB)
        f.write(b"tail")
    files["boot/sparse"] = b"head" + bytes(3 * MIB - 4) + b"tail"
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-13-amd64")
    (root / "boot" / "current").symlink_to("/boot/../boot/./vmlinuz-6.1.0-13-amd64")
    (root / "kernels").symlink_to("/boot")
    (root / "loop").symlink_to("loop")
    long_dir = root / "deep"
    long_dir.mkdir()
    # a slow (non-inline) symlink: target longer than the 60 bytes that fit in the inode
    (long_dir / "far").symlink_to("../" + "./" * 40 + "boot/initrd.img-6.1.0-13-amd64")
    return files


def _mkfs(image: Path, tree: Path, *, label: str = "trixie-root", offset: int = 0) -> None:
    extra = ["-E", f"offset={offset}"] if offset else []
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", FS_UUID, *extra, "-d", tree, image, "16M"])


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("ext4")
    tree = base / "tree"
    tree.mkdir()
    files = _tree(tree)
    image = base / "fs.img"
    _mkfs(image, tree)
    return image, files


def test_read_regular_files_byte_exact(ext4_image: tuple[Path, dict[str, bytes]]) -> None:
    image, files = ext4_image
    with Ext4Reader.open(image) as fs:
        for rel, data in files.items():
            assert fs.read("/" + rel)[1] == data


def _bytes(data: FileData | None) -> bytes | None:
    return data.read() if isinstance(data, DeviceRuns) else data


def test_located_files_stage_byte_exact_without_being_read(
    ext4_image: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    image, files = ext4_image
    esp = MountedEsp(tmp_path / "esp")
    with Ext4Reader.open(image) as fs:
        for rel, data in files.items():
            canon, located = fs.locate("/" + rel)
            assert canon == "/" + rel
            # extents stay on the device; the file's hole is a run of zeros, not a read
            assert isinstance(located, DeviceRuns), rel
            assert any(at is None for at, _ in located.runs) == (rel == "boot/sparse"), rel
            esp.write("\\staged\\" + rel.replace("/", "_"), located)
            assert (tmp_path / "esp/staged" / rel.replace("/", "_")).read_bytes() == data


def test_symlinks_relative_absolute_dotdot_and_directory(
    ext4_image: tuple[Path, dict[str, bytes]],
) -> None:
    image, files = ext4_image
    kernel = files["boot/vmlinuz-6.1.0-13-amd64"]
    with Ext4Reader.open(image) as fs:
        assert fs.read("/vmlinuz") == ("/boot/vmlinuz-6.1.0-13-amd64", kernel)
        assert fs.read("/boot/current")[1] == kernel
        assert fs.read("/kernels/vmlinuz-6.1.0-13-amd64")[1] == kernel
        assert fs.read("/deep/far")[1] == files["boot/initrd.img-6.1.0-13-amd64"]
        with pytest.raises(DiskReadError, match="too many levels"):
            fs.read("/loop")
        with pytest.raises(DiskReadError, match=r"fs.img:/boot/nope"):
            fs.read("/boot/nope")
        with pytest.raises(DiskReadError, match="not a regular file"):
            fs.read("/kernels")


def test_default_kernel_is_lexicographically_largest_and_initrd_is_paired(
    ext4_image: tuple[Path, dict[str, bytes]],
) -> None:
    image, files = ext4_image
    with Ext4Reader.open(image) as fs:
        # "6.1.0-9" sorts after "6.1.0-13": the rule is lexicographic, as upstream's
        assert default_kernel(fs) == "/boot/vmlinuz-6.1.0-9-amd64"
        boot = read_boot_files(fs)
        assert boot.initrd_path == "/boot/initramfs-6.1.0-9-amd64"
        assert _bytes(boot.initrd) == files["boot/initramfs-6.1.0-9-amd64"]
        assert _bytes(boot.kernel) == files["boot/vmlinuz-6.1.0-9-amd64"]
        # an explicit kernel through a symlink pairs with the initrd of its real name
        boot = read_boot_files(fs, kernel="/vmlinuz")
        assert boot.kernel_path == "/boot/vmlinuz-6.1.0-13-amd64"
        assert boot.initrd_path == "/boot/initrd.img-6.1.0-13-amd64"


def test_no_kernel_is_a_clear_error(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "etc").mkdir(parents=True)
    image = tmp_path / "empty.img"
    _mkfs(image, tree)
    with Ext4Reader.open(image) as fs, pytest.raises(DiskReadError, match="no kernel found"):
        read_boot_files(fs)


def test_not_ext4(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(1 << 16))
    with pytest.raises(DiskReadError, match="not a readable ext4"):
        Ext4Reader.open(junk)


@pytest.fixture(scope="module")
def fake_machine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """sys/block/vdb{,/vdb1,/vdb2} and dev/vdb{,1,2}: a GPT disk made by sgdisk, its
    partitions extracted as the kernel would expose them."""
    tmp_path = tmp_path_factory.mktemp("machine")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(40 * MIB)
    run(
        [
            "sgdisk",
            "-n",
            "1:2048:+4M",
            "-t",
            "1:ef00",
            "-c",
            "1:cloud-boot-cache",
            "-n",
            "2:0:+20M",
            "-t",
            "2:8300",
            "-c",
            "2:rootfs",
            "-u",
            "2:6a0c4d5e-1b2c-4d3e-8f40-5a6b7c8d9e0f",
            disk,
        ]
    )
    table = gpt.read_gpt(disk.read_bytes()[: 34 * 512])
    root_part = table.partitions[1]
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hi")
    _mkfs(disk, tree, offset=root_part.first_lba * 512)
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    (sysfs / "block" / "vdb").mkdir(parents=True)
    (dev / "vdb").symlink_to(disk)
    data = disk.read_bytes()
    for part in table.partitions:
        name = f"vdb{part.number}"
        (sysfs / "block" / "vdb" / name).mkdir()
        (sysfs / "block" / "vdb" / name / "partition").write_text(f"{part.number}\n")
        (dev / name).write_bytes(data[part.first_lba * 512 : (part.last_lba + 1) * 512])
    (sysfs / "block" / "loop0").mkdir()
    return sysfs, dev


def test_scan_lists_disks_and_partitions(fake_machine: tuple[Path, Path]) -> None:
    sysfs, dev = fake_machine
    names = [(d.name, d.disk, d.partition) for d in scan(sysfs, dev)]
    assert names == [("vdb", "vdb", 0), ("vdb1", "vdb", 1), ("vdb2", "vdb", 2)]


@pytest.mark.parametrize(
    "spec",
    [
        "/dev/vdb2",
        "vdb2",
        "LABEL=trixie-root",
        f"UUID={FS_UUID.upper()}",
        "PARTLABEL=rootfs",
        "PARTUUID=6A0C4D5E-1B2C-4D3E-8F40-5A6B7C8D9E0F",
    ],
)
def test_device_specs(fake_machine: tuple[Path, Path], spec: str) -> None:
    sysfs, dev = fake_machine
    found = resolve(spec, scan(sysfs, dev))
    assert found.name == "vdb2"
    with Ext4Reader.open(found.node) as fs:
        assert fs.read("/hello")[1] == b"hi"


def test_unknown_spec_lists_devices(fake_machine: tuple[Path, Path]) -> None:
    sysfs, dev = fake_machine
    with pytest.raises(DeviceNotFoundError, match=r"LABEL=nope.*vdb, vdb1, vdb2"):
        resolve("LABEL=nope", scan(sysfs, dev))
    with pytest.raises(DeviceNotFoundError, match="expected /dev/"):
        resolve("SERIAL=1", scan(sysfs, dev))


def test_identify_reads_ext4_superblock(ext4_image: tuple[Path, dict[str, bytes]]) -> None:
    image, _ = ext4_image
    ident = identify(image.read_bytes()[:4096])
    assert ident is not None
    assert (ident.fs, ident.label, uuid.UUID(ident.uuid)) == (
        "ext4",
        "trixie-root",
        uuid.UUID(FS_UUID),
    )
