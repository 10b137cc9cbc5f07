"""The device-mapper tables the guest hands its kernel for xfs/btrfs on volumes
(guest/agent/volumes/devmapper.py, guest/agent/disks/kernelvol.py).

The host has no device-mapper, so the tables are loaded for real only in QEMU
(tests/test_guest_kernelvol_qemu.py). Here: the ioctl numbers are the kernel's (the
values strace shows for dmsetup), the buffer layout is the one ``struct dm_ioctl`` and
``struct dm_target_spec`` define, and the crypt table made from a cryptsetup image says
what cryptsetup itself says about that image (``luksDump --dump-volume-key``): key, data
offset, sector size, on the image's real loop device.
"""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path

import pytest

from guest.agent.console import Console
from guest.agent.disks import discover, kernelvol
from guest.agent.machine import Paths
from guest.agent.volumes import devmapper
from guest.contract.errors import CloudbootError
from guest.contract.plan import DiskSource
from publisher.run import run
from tests.disk_images import Layout, LoopMounter, image_for, loop_devices, sys_tree
from tests.volume_images import has_cryptsetup, make_luks

SECRET = b"dm-crypt-table-7a3c"


def test_ioctl_numbers_are_the_kernels() -> None:
    assert devmapper.ioctl_number(devmapper.DM_DEV_CREATE) == 0xC138FD03
    assert devmapper.ioctl_number(devmapper.DM_DEV_REMOVE) == 0xC138FD04
    assert devmapper.ioctl_number(devmapper.DM_DEV_SUSPEND) == 0xC138FD06
    assert devmapper.ioctl_number(devmapper.DM_TABLE_LOAD) == 0xC138FD09


def test_table_buffer_layout() -> None:
    targets = devmapper.linear_targets([(0, 8 << 20, 252 << 20 | 2, 1 << 20),
                                        (8 << 20, 4 << 20, 252 << 20 | 2, 20 << 20)])  # fmt: skip
    buffer = devmapper.table_buffer("cloudboot-disk", targets, devmapper.DM_READONLY_FLAG)
    version = struct.unpack_from("=3I", buffer)
    data_size, data_start, count, _open, flags = struct.unpack_from("=IIIiI", buffer, 12)
    assert version == (4, 0, 0) and data_start == 312 and count == 2
    assert data_size == len(buffer) and flags == devmapper.DM_READONLY_FLAG
    assert buffer[48:62] == b"cloudboot-disk" and buffer[62] == 0
    at, lines = data_start, []
    for _ in range(count):
        start, length, _status, step, kind = struct.unpack_from("=QQiI16s", buffer, at)
        assert step % 8 == 0
        params = bytes(buffer[at + 40 : at + step]).split(b"\0")[0].decode()
        lines.append((start, length, kind.rstrip(b"\0").decode(), params))
        at += step
    assert at == len(buffer)
    assert lines == [(0, 16384, "linear", "252:2 2048"), (16384, 8192, "linear", "252:2 40960")]


def test_device_numbers_decode_as_the_kernel_encodes_them() -> None:
    for major, minor in ((253, 0), (253, 300), (259, 70000)):
        dev = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
        reply = devmapper.header("x")[:40] + struct.pack("=Q", dev) + devmapper.header("x")[48:]
        assert devmapper.device_number(reply) == (major, minor)


def test_bad_names_and_pieces_are_refused() -> None:
    with pytest.raises(devmapper.DeviceMapperError):
        devmapper.header("a/b")
    with pytest.raises(devmapper.DeviceMapperError, match="whole sectors"):
        devmapper.linear_targets([(0, 1000, 1, 0)])
    with pytest.raises(devmapper.DeviceMapperError, match="0 targets"):
        devmapper.table_buffer("x", [], 0)


def _context(root: Path, source: DiskSource) -> discover.DiskContext:
    from guest.agent import blockdev

    paths = Paths(root)
    devices = tuple(blockdev.scan(paths.sys, paths.dev))
    return discover.DiskContext(source, devices, paths, Console([io.StringIO()]))


@pytest.mark.skipif(not has_cryptsetup(), reason="cryptsetup not installed")
@pytest.mark.parametrize("sector", [4096, 512])
def test_crypt_table_says_what_cryptsetup_says(tmp_path: Path, sector: int) -> None:
    plain = tmp_path / "plain.img"
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", plain, "8M"])
    image = make_luks(plain, tmp_path / "luks.img", SECRET, sector_size=sector)
    dump = run(["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
                "-", image], input=SECRET).stdout.decode()  # fmt: skip
    key_hex = "".join(re.search(r"MK dump:\s*((?:[0-9a-f]{2} ?\s*)+)", dump).group(1).split())  # type: ignore[union-attr]
    info = run(["cryptsetup", "luksDump", image]).stdout.decode()
    offset = int(re.search(r"offset:\s*(\d+) \[bytes\]", info).group(1))  # type: ignore[union-attr]
    with loop_devices([image], readonly=True) as (loop,):
        root = tmp_path / "root"
        sys_tree(root, {"vdc": Path(loop)})
        source = DiskSource("/dev/vdc", "xfs", luks_passphrase=SECRET.decode())
        mapping = kernelvol.plan(_context(root, source))
        assert mapping is not None and mapping.secret
        (target,) = mapping.targets
        rdev = Path(loop).stat().st_rdev
        number = f"{os.major(rdev)}:{os.minor(rdev)}"
    size = image.stat().st_size - offset
    options = "" if sector == 512 else f" 1 sector_size:{sector}"
    assert (target.start, target.length, target.kind) == (0, size // 512, "crypt")
    assert bytes(target.params).decode() == (
        f"aes-xts-plain64 {key_hex} 0 {number} {offset // 512}{options}"
    )
    assert key_hex not in repr(mapping)
    mapping.wipe()
    assert not any(target.params)


@pytest.mark.skipif(not has_cryptsetup(), reason="cryptsetup not installed")
def test_without_device_mapper_the_error_names_the_module_and_not_the_secret(
    tmp_path: Path,
) -> None:
    """These hosts have no device-mapper: the guest's message when dm_mod is missing."""
    layout = Layout("dm-luks-xfs", "xfs", {"boot/vmlinuz-6.1.0-1-amd64": b"k" * 4096})
    (plain,) = image_for(layout)
    image = make_luks(plain, tmp_path / "luks.img", SECRET, sector_size=512)
    root = tmp_path / "root"
    sys_tree(root, {"vdc": image})
    (root / "dev/mapper").mkdir()
    source = DiskSource("/dev/vdc", "xfs", luks_passphrase=SECRET.decode())
    out = io.StringIO()
    with pytest.raises(CloudbootError) as caught:
        discover.read_disk(source, Paths(root), Console([out]), LoopMounter())
    message = str(caught.value)
    assert message.startswith("/dev/vdc: LUKS2 on "), message
    assert "mapper/control" in message and "dm_mod" in message, message
    assert "/dev/vdc" in out.getvalue() and SECRET.decode() not in message + out.getvalue()


def test_a_plain_device_needs_no_table(tmp_path: Path) -> None:
    plain = tmp_path / "plain.img"
    run(["mkfs.ext4", "-q", "-F", "-L", "root", plain, "8M"])
    root = tmp_path / "root"
    sys_tree(root, {"vdc": plain})
    assert kernelvol.plan(_context(root, DiskSource("LABEL=root", "xfs"))) is None


@pytest.mark.skipif(not has_cryptsetup(), reason="cryptsetup not installed")
def test_ext4_in_luks_on_a_block_device_reads_the_plain_bytes(tmp_path: Path) -> None:
    """On a real block device (a loop device) the LUKS data goes through dm-crypt where
    device-mapper exists (the guest) and falls back to userland, logged, where it does
    not (these hosts); the bytes are the plain image's either way."""
    from guest.agent import volumes
    from tests.volume_images import LogLines

    plain = tmp_path / "plain.img"
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", plain, "8M"])
    image = make_luks(plain, tmp_path / "luks.img", SECRET, sector_size=4096)
    log = LogLines()
    with (
        loop_devices([image], readonly=True) as (loop,),
        volumes.open_device(Path(loop), SECRET.decode(), log) as opened,
    ):
        got = opened.stream.read(plain.stat().st_size)
    assert got == plain.read_bytes()
    try:  # the node may exist with no driver behind it (ENODEV), as here
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
        has_dm = True
    except OSError:
        has_dm = False
    if has_dm:
        assert any("decrypted by dm-crypt" in line for line in log.lines), log.lines
    else:
        assert any("dm-crypt not used" in line and "decrypting in userland" in line
                   for line in log.lines), log.lines  # fmt: skip
    assert SECRET.decode() not in "\n".join(log.lines)
