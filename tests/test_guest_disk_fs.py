"""xfs and btrfs disk targets on the host: real images made by mkfs.xfs / mkfs.btrfs and
btrfs subvolumes (tests/disk_images.py), read through the host kernel's drivers by the
guest's reader (read-only, no log replay, under a deadline), as the guest does; and
upstream's cmdline-only disk mode through the agent's whole pass."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from guest.agent.console import Console
from guest.agent.disks import discover, mounted
from guest.agent.disks.bootfiles import BootFiles, DiskReadError
from guest.agent.machine import Paths
from guest.contract.plan import DiskSource
from tests.agent_harness import (
    INITRD as AGENT_INITRD,
    KERNEL as AGENT_KERNEL,
    _mtype,
    _run,
    machine,
)
from tests.disk_images import Layout, LoopMounter, image_for, sys_tree

__all__ = ["machine"]  # the fixture, imported for the tests below

EL_V = "5.14.0-362.8.1.el9_3.x86_64"
FC_V = "6.5.6-300.fc39.x86_64"
KERNEL = os.urandom(3 * (1 << 20) + 5)  # over a few extents
INITRD = os.urandom(700_000)


def _boot(v: str, prefix: str = "boot/") -> dict[str, bytes]:
    return {f"{prefix}vmlinuz-{v}": KERNEL, f"{prefix}initramfs-{v}.img": INITRD,
            f"{prefix}config-{v}": b"CONFIG_XFS_FS=m\n"}  # fmt: skip


RHEL_BOOT = Layout("rhel-xfs-boot", "xfs", _boot(EL_V, ""), {"vmlinuz": f"vmlinuz-{EL_V}"},
                   label="boot")  # fmt: skip
FEDORA = Layout("fedora-btrfs", "btrfs", _boot(FC_V), {"boot/vmlinuz": f"/boot/vmlinuz-{FC_V}"},
                label="fedora", subvolumes=("root", "home"), tree_subvolume="root")  # fmt: skip
FEDORA_DEFAULT = Layout("fedora-btrfs-default", "btrfs", _boot(FC_V), label="fedora",
                        subvolumes=("root", "home"), tree_subvolume="root",
                        default_subvolume="root")  # fmt: skip
RAID1 = Layout("btrfs-raid1", "btrfs", _boot("6.1.0-28-amd64"), label="mirror",
               raid1_devices=2)  # fmt: skip


def _read(tmp_path: Path, disks: dict[str, Path], source: DiskSource,
          mounter: mounted.Mounter | None = None) -> tuple[BootFiles, str]:  # fmt: skip
    import io

    root = tmp_path / "root"
    sys_tree(root, disks)
    out = io.StringIO()
    files = discover.read_disk(source, Paths(root), Console([out]), mounter or LoopMounter())
    assert not os.path.ismount(root / "run/cloudboot/disk")
    return files, out.getvalue()


def test_rhel_xfs_boot_partition(tmp_path: Path) -> None:
    (image,) = image_for(RHEL_BOOT)
    mounter = LoopMounter()
    files, log = _read(tmp_path, {"vdb": image}, DiskSource("LABEL=boot", fs="xfs"), mounter)
    assert (files.kernel_path, files.initrd_path) == (f"/vmlinuz-{EL_V}", f"/initramfs-{EL_V}.img")
    assert (files.kernel, files.initrd) == (KERNEL, INITRD)
    assert mounter.calls == [("xfs", ["norecovery"])]
    assert "mounting LABEL=boot (vdb) xfs read-only" in log


def test_fedora_btrfs_root_subvolume_under_the_top_level(tmp_path: Path) -> None:
    (image,) = image_for(FEDORA)
    files, _log = _read(tmp_path, {"vdb": image}, DiskSource("/dev/vdb", fs="btrfs"))
    assert files.kernel_path == f"/boot/vmlinuz-{FC_V}"
    assert (files.kernel, files.initrd) == (KERNEL, INITRD)
    # an absolute symlink inside the subvolume resolves against the subvolume, not the guest
    files, _log = _read(tmp_path / "b", {"vdb": image},
                        DiskSource("/dev/vdb", fs="btrfs", kernel="/boot/vmlinuz"))  # fmt: skip
    assert files.kernel == KERNEL


def test_btrfs_default_subvolume(tmp_path: Path) -> None:
    (image,) = image_for(FEDORA_DEFAULT)
    mounter = LoopMounter()
    files, _log = _read(tmp_path, {"vdb": image}, DiskSource("UUID=" + _fsid(image), fs="btrfs"),
                        mounter)  # fmt: skip
    assert files.initrd_path == f"/boot/initramfs-{FC_V}.img"
    assert mounter.calls == [("btrfs", ["rescue=nologreplay"])]


def _fsid(image: Path) -> str:
    from guest.agent.disks.btrfs import read_superblock

    sb = read_superblock(image)
    assert sb is not None
    return sb.fsid


def test_btrfs_raid1_over_two_disks_by_fsid(tmp_path: Path) -> None:
    first, second = image_for(RAID1)
    files, log = _read(tmp_path, {"vdb": first, "vdc": second, "vdd": image_for(FEDORA)[0]},
                       DiskSource("LABEL=mirror", fs="btrfs"))  # fmt: skip
    assert (files.kernel, files.initrd) == (KERNEL, INITRD)
    assert "(vdb, vdc) btrfs" in log


def test_btrfs_raid1_with_a_member_missing_names_what_was_found(tmp_path: Path) -> None:
    first, _second = image_for(RAID1)
    with pytest.raises(DiskReadError, match=r"has 2 devices but only 1 were found \(vdb\)"):
        _read(tmp_path, {"vdb": first}, DiskSource("/dev/vdb", fs="btrfs"))


def test_a_damaged_xfs_is_a_located_error(tmp_path: Path) -> None:
    (image,) = image_for(RHEL_BOOT)
    broken = tmp_path / "broken.img"
    with open(image, "rb") as src, open(broken, "wb") as dst:
        dst.write(bytes(4096))  # the primary superblock gone
        src.seek(4096)
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    with pytest.raises(DiskReadError, match=r"dev/vdb: cannot mount xfs read-only"):
        _read(tmp_path, {"vdb": broken}, DiskSource("/dev/vdb", fs="xfs"))


class _StuckMounter(LoopMounter):
    """The kernel's driver not returning (a hostile disk): mount blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def mount(self, fstype: str, devices: list[Path], options: list[str], target: Path) -> None:
        self.release.wait()
        raise OSError(5, "released")


def test_a_mount_that_never_returns_is_fatal_naming_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = image_for(RHEL_BOOT)
    monkeypatch.setattr(mounted, "MOUNT_SECONDS", 0.5)
    stuck = _StuckMounter()
    try:
        with pytest.raises(DiskReadError, match=r"dev/vdb: gave up after 0.5 s at mount xfs"):
            _read(tmp_path, {"vdb": image}, DiskSource("/dev/vdb", fs="xfs"), stuck)
    finally:
        stuck.release.set()


def test_file_size_cap_applies_to_mounted_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = image_for(RHEL_BOOT)
    monkeypatch.setattr(mounted, "MAX_BOOT_FILE", 1000)
    monkeypatch.setattr(mounted.MountedFs.locate, "__kwdefaults__", {"limit": 1000})
    with pytest.raises(DiskReadError, match=rf"vmlinuz-{EL_V}: 3145733 bytes, more than the 1000"):
        _read(tmp_path, {"vdb": image}, DiskSource("/dev/vdb", fs="xfs"))


def test_symlinks_never_leave_the_mount(tmp_path: Path) -> None:
    escape = Layout("xfs-escape", "xfs", {"boot/vmlinuz-1": b"k"},
                    {"boot/evil": "../../../../../../etc/hostname"})  # fmt: skip
    (image,) = image_for(escape)
    with pytest.raises(DiskReadError, match=r"dev/vdb:/etc: no such file"):
        _read(tmp_path, {"vdb": image}, DiskSource("/dev/vdb", fs="xfs", kernel="/boot/evil"))


# -- upstream's disk mode: cloudboot.disk* on the command line, no network, no plan ------


def _staged(machine: Path, name: str) -> tuple[bytes, bytes, str]:
    from guest.contract.efi import GLOBAL_VARIABLE_GUID
    from guest.contract.efi.efivarfs import EfiVarStore
    from guest.contract.efi.loadoption import LoadOption

    esp = machine / "dev/vda1"
    boot = EfiVarStore(machine / "sys/firmware/efi/efivars").read("Boot0001", GLOBAL_VARIABLE_GUID)
    assert boot is not None
    option = LoadOption.from_bytes(boot.data)
    kernel = _mtype(esp, f"::/EFI/Linux/{name}-vmlinuz.efi")
    initrd = _mtype(esp, f"::/EFI/Linux/{name}-initrd")
    return kernel, initrd, f"{option.description} | {option.optional_text()}"


def test_disk_mode_ext4_stages_without_network_or_plan(machine: Path) -> None:
    status, log, _system = _run(
        machine,
        "console=ttyS0 cloudboot.exit=reboot cloudboot.disk=LABEL=debroot"
        ' cloudboot.cmdline="console=ttyS0 root=LABEL=debroot"',
    )
    assert status == 0, log
    assert "disk mode: cloudboot.disk=LABEL=debroot fs=ext4 (no network, no plan)" in log
    assert "step network" not in log and "step fetch" not in log
    assert _staged(machine, "disk") == (
        AGENT_KERNEL,
        AGENT_INITRD,
        r"cloud-boot disk | initrd=\EFI\Linux\disk-initrd console=ttyS0 root=LABEL=debroot",
    )


def test_disk_mode_btrfs_raid1_with_pinned_paths(machine: Path) -> None:
    first, second = image_for(RAID1)
    sys_tree(machine, {"vdc": first, "vdd": second})
    passphrase = "never-printed-7f3a"
    status, log, _system = _run(
        machine,
        "cloudboot.exit=reboot cloudboot.disk=LABEL=mirror cloudboot.disk.fs=btrfs"
        " cloudboot.disk.kernel=/boot/vmlinuz-6.1.0-28-amd64"
        " cloudboot.disk.initrd=/boot/initramfs-6.1.0-28-amd64.img"
        f" cloudboot.disk.luks-passphrase={passphrase} cloudboot.cmdline=ro",
        mounter=LoopMounter(),
    )
    assert status == 0, log
    assert passphrase not in log
    kernel, initrd, option = _staged(machine, "disk")
    assert (kernel, initrd) == (KERNEL, INITRD)
    assert option.endswith("disk-initrd ro")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("cloudboot.disk=/dev/vdb1 cloudboot.disk.fs=ntfs", "cloudboot.disk.fs='ntfs': expected"),
        ("cloudboot.disk=vdb1", "cloudboot.disk='vdb1': expected /dev/..."),
    ],
)
def test_disk_mode_bad_keys_are_named(machine: Path, words: str, message: str) -> None:
    status, log, _system = _run(machine, f"cloudboot.exit=reboot {words}")
    assert status == 1
    assert f"FATAL: /proc/cmdline: {message}" in log


def test_a_btrfs_superblock_claiming_many_devices_is_refused(tmp_path: Path) -> None:
    """The member scan is bounded by the superblock's own count, and that count is capped."""
    import struct

    from guest.agent.disks.btrfs import MAX_DEVICES, SUPERBLOCK_OFFSET

    (image,) = image_for(FEDORA)
    forged = tmp_path / "forged.img"
    with open(image, "rb") as f:
        head = bytearray(f.read(SUPERBLOCK_OFFSET + 0x1000))
    struct.pack_into("<Q", head, SUPERBLOCK_OFFSET + 0x88, 1 << 40)
    forged.write_bytes(bytes(head))
    with pytest.raises(DiskReadError, match=rf"{1 << 40} devices \(at most {MAX_DEVICES}\)"):
        _read(tmp_path, {"vdb": forged}, DiskSource("/dev/vdb", fs="btrfs"))


def test_xfs_and_btrfs_labels_and_uuids_resolve(tmp_path: Path) -> None:
    from guest.agent.blockdev import identify

    (xfs,) = image_for(RHEL_BOOT)
    first, second = image_for(RAID1)
    ids = [identify(p.read_bytes()[:0x11000]) for p in (xfs, first, second)]
    assert [(i.fs, i.label) for i in ids if i] == [("xfs", "boot"), ("btrfs", "mirror"),
                                                   ("btrfs", "mirror")]  # fmt: skip
    assert ids[1] and ids[2] and ids[1].uuid == ids[2].uuid == _fsid(first)


def test_symlink_loops_and_failed_unmounts_are_located_errors(tmp_path: Path) -> None:
    looped = Layout("xfs-loop", "xfs", {"boot/vmlinuz-1": b"k"},
                    {"boot/a": "b", "boot/b": "/boot/a"})  # fmt: skip
    (image,) = image_for(looped)
    with pytest.raises(DiskReadError, match=r"dev/vdb:/boot/a: too many levels of symbolic"):
        _read(tmp_path, {"vdb": image}, DiskSource("/dev/vdb", fs="xfs", kernel="/boot/a"))

    class BusyOnUnmount(LoopMounter):
        def umount(self, target: Path) -> None:
            super().umount(target)
            raise OSError(16, "Device or resource busy")

    with pytest.raises(DiskReadError, match=r"dev/vdb: OSError: \[Errno 16\] Device or resource"):
        _read(tmp_path / "busy", {"vdb": image}, DiskSource("/dev/vdb", fs="xfs"),
              BusyOnUnmount())  # fmt: skip


def test_an_ext4_disk_imports_no_mount_code(tmp_path: Path) -> None:
    """Readers are imported when used: the ext4 path loads neither the mount code, the
    btrfs parser nor ctypes' mount(2) (a fresh interpreter, as the guest's PID 1)."""
    import sys

    from publisher.run import run

    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot/vmlinuz-6.1").write_bytes(b"k")
    image = tmp_path / "fs.img"
    run(["mkfs.ext4", "-q", "-F", "-d", tree, image, "8M"])
    root = tmp_path / "root"
    sys_tree(root, {"vdb": image})
    script = (
        "import sys, io\n"
        "from pathlib import Path\n"
        "from guest.agent import main\n"
        "from guest.agent.console import Console\n"
        "from guest.agent.disks import discover\n"
        "from guest.agent.machine import Paths\n"
        "from guest.contract.plan import DiskSource\n"
        "f = discover.read_disk(DiskSource('/dev/vdb'), Paths(Path(sys.argv[1])),"
        " Console([io.StringIO()]))\n"
        "print(f.kernel_path, sorted(m for m in sys.modules if m.startswith("
        "('guest.agent.disks.mounted', 'guest.agent.disks.btrfs', 'guest.agent.sysguest'))))\n"
    )
    out = run([sys.executable, "-c", script, root]).stdout.decode()
    assert out.strip() == "/boot/vmlinuz-6.1 []"
