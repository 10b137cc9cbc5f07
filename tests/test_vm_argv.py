"""VM command lines as data: the exact vfkit/QEMU argv for a config, pinned without a VM.

The vfkit argv is the seed quickstart's command line (boot.iso read-only, cache disk,
the chained distro disk, NAT with a fixed MAC, serial log, rng), driven from a real
cloudboot.toml; the QEMU argv carries the spec section 7 rules (pflash code read-only +
per-VM vars, no bootindex, virtio-rng, user networking, QMP).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.contract.arch import Arch
from publisher.config import Accel, Backend, ConfigError, load_config
from watcher.vm.firmware import Firmware, find_firmware
from watcher.vm.qemu import _host_has_virtualization, qemu_argv
from watcher.vm.spec import VmError, VmSpec
from watcher.vm.vfkit import vfkit_argv

SEED_TOML = """
[build]
iso = "uki/boot.iso"
cache_disk = "uki/menu-cache.raw"

[vm]
backend = "vfkit"
arch = "arm64"
disks = ["trixie.raw"]
nvram = "nvram.fd"
serial_log = "vm.log"
state_dir = "st"
"""


def seed_workspace(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "cloudboot.toml").write_text(SEED_TOML + extra)
    (tmp_path / "trixie.raw").write_bytes(b"")
    return tmp_path


def test_vfkit_argv_is_the_seed_quickstart(tmp_path: Path) -> None:
    root = seed_workspace(tmp_path)
    spec = VmSpec.from_config(load_config(root))
    assert spec.backend is Backend.VFKIT
    assert vfkit_argv(spec, create_nvram=False) == [
        "vfkit",
        "--cpus", "2",
        "--memory", "1024",
        "--bootloader", f"efi,variable-store={root}/nvram.fd",
        "--device", f"virtio-blk,path={root}/uki/boot.iso,readonly",
        "--device", f"virtio-blk,path={root}/uki/menu-cache.raw",
        "--device", f"virtio-blk,path={root}/trixie.raw",
        "--device", "virtio-net,nat,mac=52:54:00:c1:0b:01",
        "--device", f"virtio-serial,logFilePath={root}/vm.log",
        "--device", "virtio-rng",
        "--pidfile", f"{root}/st/vfkit.pid",
        "--restful-uri", f"unix://{root}/st/rest.sock",
        "--log-level", "info",
    ]  # fmt: skip


def test_vfkit_argv_create_and_gui(tmp_path: Path) -> None:
    root = seed_workspace(tmp_path, "gui = true\n")
    argv = vfkit_argv(VmSpec.from_config(load_config(root)), create_nvram=True)
    assert argv[argv.index("--bootloader") + 1] == f"efi,variable-store={root}/nvram.fd,create"
    gui = argv.index("--gui")
    assert argv[gui + 1 : gui + 7] == [
        "--device", "virtio-input,keyboard",
        "--device", "virtio-input,pointing",
        "--device", "virtio-gpu,width=1280,height=800",
    ]  # fmt: skip


def test_vfkit_rejects_paths_with_commas(tmp_path: Path) -> None:
    root = seed_workspace(tmp_path)
    spec = VmSpec.from_config(load_config(root))
    bad = VmSpec(**{**spec.__dict__, "serial_log": root / "a,b.log"})
    with pytest.raises(VmError, match=r"\[vm\].serial_log: vfkit cannot take a path"):
        vfkit_argv(bad, create_nvram=False)


def qemu_spec(tmp_path: Path, arch: Arch, **changes: object) -> VmSpec:
    base = VmSpec(
        arch=arch,
        cpus=2,
        memory_mib=1024,
        iso=tmp_path / "boot.iso",
        cache_disk=tmp_path / "cache.raw",
        disks=(tmp_path / "trixie.raw",),
        mac="52:54:00:c1:0b:01",
        gui=False,
        nvram=tmp_path / "vm/nvram.fd",
        serial_log=tmp_path / "vm/serial.log",
        state_dir=tmp_path / "vm",
        backend=Backend.QEMU,
    )
    return VmSpec(**{**base.__dict__, **changes})


FW = Firmware(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"))


def test_qemu_argv_x86_64_tcg(tmp_path: Path) -> None:
    t = tmp_path
    assert qemu_argv(qemu_spec(t, Arch.X86_64), FW, accel=Accel.TCG) == [
        "qemu-system-x86_64", "-name", "cloudboot", "-nodefaults", "-no-user-config",
        "-machine", "q35", "-accel", "tcg", "-smp", "2", "-m", "1024",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "-drive", f"if=pflash,format=raw,unit=1,file={t}/vm/nvram.fd",
        "-drive", f"if=none,id=disk0,format=raw,readonly=on,file={t}/boot.iso",
        "-device", "virtio-blk-pci,drive=disk0",
        "-drive", f"if=none,id=disk1,format=raw,file={t}/cache.raw",
        "-device", "virtio-blk-pci,drive=disk1",
        "-drive", f"if=none,id=disk2,format=raw,file={t}/trixie.raw",
        "-device", "virtio-blk-pci,drive=disk2",
        "-device", "virtio-rng-pci",
        "-netdev", "user,id=net0",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:c1:0b:01",
        "-chardev", f"file,id=serial0,path={t}/vm/serial.log,append=on",
        "-serial", "chardev:serial0",
        "-qmp", f"unix:{t}/vm/qmp.sock,server=on,wait=off",
        "-pidfile", f"{t}/vm/qemu.pid",
        "-display", "none",
    ]  # fmt: skip


def test_qemu_argv_aarch64_kvm_gui_and_escaping(tmp_path: Path) -> None:
    argv = qemu_argv(qemu_spec(tmp_path, Arch.AARCH64, gui=True), FW, accel=Accel.TCG)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-cpu") + 1] == "cortex-a72"  # pointer auth is slow under TCG
    assert "-display" not in argv and "virtio-gpu-pci" in argv
    kvm = qemu_argv(qemu_spec(tmp_path, Arch.AARCH64), FW, accel=Accel.KVM)
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    comma = qemu_argv(qemu_spec(tmp_path, Arch.X86_64, iso=Path("/a,b/boot.iso")), FW)
    assert "if=none,id=disk0,format=raw,readonly=on,file=/a,,b/boot.iso" in comma


def test_qemu_argv_never_sets_bootindex(tmp_path: Path) -> None:
    """OVMF would prune the guest's HD() Boot0001 if QEMU passed a boot order (spec 7)."""
    for arch in Arch:
        assert not any("bootindex" in a for a in qemu_argv(qemu_spec(tmp_path, arch), FW))


def test_auto_accel_must_be_resolved_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kvm_usable"):
        qemu_argv(qemu_spec(tmp_path, Arch.X86_64), FW, accel=Accel.AUTO)


def test_kvm_needs_virtualization_flags() -> None:
    assert _host_has_virtualization("flags\t\t: fpu vme vmx sse\n")
    assert not _host_has_virtualization("flags\t\t: fpu vme hypervisor sse\n")


def test_spec_defaults_and_backend_per_host(tmp_path: Path) -> None:
    spec = VmSpec.from_config(load_config(tmp_path))
    assert spec.nvram == tmp_path / ".cloudboot/vm/nvram.fd"
    assert spec.serial_log == tmp_path / ".cloudboot/vm/serial.log"
    assert spec.iso == tmp_path / "build/boot.iso"
    assert spec.backend is Backend.for_host()
    assert Backend.for_host("darwin") is Backend.VFKIT
    assert Backend.for_host("linux") is Backend.QEMU


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('mac = "auto"', r"\[vm\].mac: expected a fixed MAC"),
        ("cpus = 0", r"\[vm\].cpus: must be at least 1"),
        ('accel = "hvf"', r"\[vm\].accel: expected one of 'auto', 'kvm', 'tcg'"),
    ],
)
def test_spec_errors_name_the_key_and_file(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "cloudboot.toml").write_text(f"[vm]\n{line}\n")
    with pytest.raises(ConfigError, match=message) as info:
        VmSpec.from_config(load_config(tmp_path))
    assert str(tmp_path / "cloudboot.toml") in str(info.value)


def test_missing_disk_is_named_before_launch(tmp_path: Path) -> None:
    spec = qemu_spec(tmp_path, Arch.X86_64)
    with pytest.raises(VmError, match=r"\[build\].iso: disk not found: .*boot.iso"):
        spec.check_files()


def test_firmware_discovery(tmp_path: Path) -> None:
    fw = find_firmware(Arch.X86_64)
    assert fw.code.is_file() and fw.vars_template.is_file()
    with pytest.raises(VmError, match="install the Debian package qemu-efi-aarch64"):
        find_firmware(Arch.AARCH64, {Arch.AARCH64: ((str(tmp_path / "no"), "x"),)})
