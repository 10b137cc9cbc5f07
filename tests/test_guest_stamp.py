"""The staged-files stamp (docs/wire-formats.md §5.6): a pass whose target's files are
already on the cache ESP, made from the same layers, does not write them again; a pass
the firmware came back to (our Boot0001 for that target still set) always does.

The unit tests record every write an ESP sees; the agent tests run the whole pass against
a real registry and the FAT image of tests/agent_harness.py, reading the ESP back with
mtools.
"""

from __future__ import annotations

from pathlib import Path

from guest.agent import stage
from guest.contract import oci
from guest.contract.efi import GLOBAL_VARIABLE_GUID
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import CACHE_MARKER
from publisher.localregistry import RunningRegistry
from publisher.push import push_artifact
from publisher.registry import RegistryClient
from tests.agent_harness import INITRD, KERNEL, _mtype, _plan, _run, machine, run
from tests.helpers import push_plan

__all__ = ["machine"]

KERNEL_A, INITRD_A = b"KERNEL-A" * 4096, b"INITRD-A" * 512
KERNEL_B, INITRD_B = b"KERNEL-B" * 4096, b"INITRD-B" * 512


class RecordingEsp:
    """An ESP in memory that records every write, in order."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {CACHE_MARKER: b"marker"}
        self.writes: list[str] = []

    def write(self, path: str, data: stage.FileData) -> None:
        assert isinstance(data, bytes)
        self.files[path] = data
        self.writes.append(path)

    def read(self, path: str, limit: int) -> bytes | None:
        data = self.files.get(path)
        return data if data is not None and len(data) <= limit else None

    def flush(self) -> None:
        self.writes.append("<flush>")


KERNEL_PATH, INITRD_PATH = stage.staged_paths("k")
STAMP = stage.stamp_path("k")


def test_same_content_is_not_written_again_and_new_content_empties_the_stamp_first() -> None:
    esp = RecordingEsp()
    assert stage.write_files(esp, "k", b"kernel", b"initrd", "sha256:aa")
    assert esp.writes == [KERNEL_PATH, INITRD_PATH, "<flush>", STAMP, "<flush>"]
    assert esp.files[STAMP] == b"cloudboot staged v1 sha256:aa 6 6\n"

    esp.writes.clear()
    assert not stage.write_files(esp, "k", b"kernel", b"initrd", "sha256:aa")
    assert esp.writes == []

    # new layers: the stamp is emptied before the first byte of the new files
    assert stage.write_files(esp, "k", b"kernel2", b"initrd", "sha256:bb")
    assert esp.writes == [STAMP, KERNEL_PATH, INITRD_PATH, "<flush>", STAMP, "<flush>"]
    assert esp.files[STAMP].startswith(b"cloudboot staged v1 sha256:bb 7 6")


def test_unknown_content_is_always_written_and_leaves_no_stamp() -> None:
    esp = RecordingEsp()
    stage.write_files(esp, "k", b"kernel", None, "sha256:aa")
    assert esp.files[STAMP] == b"cloudboot staged v1 sha256:aa 6 -\n"
    esp.writes.clear()
    assert stage.write_files(esp, "k", b"kernel", None, None)  # a disk target, or came back
    assert esp.writes == [STAMP, KERNEL_PATH, "<flush>"]
    assert esp.files[STAMP] == b""
    assert stage.write_files(esp, "k", b"kernel", None, "sha256:aa")  # empty stamp: rewrite


def test_a_stamp_from_another_target_or_size_does_not_match() -> None:
    esp = RecordingEsp()
    stage.write_files(esp, "k", b"kernel", b"initrd", "sha256:aa")
    assert stage.write_files(esp, "other", b"kernel", b"initrd", "sha256:aa")
    assert stage.write_files(esp, "k", b"kernel", b"initrd-longer", "sha256:aa")


def _artifact(tmp: Path, registry: RunningRegistry, kernel: bytes, initrd: bytes) -> None:
    (tmp / "k").write_bytes(kernel)
    (tmp / "i").write_bytes(initrd)
    ref = oci.parse_ref(f"{registry.address}/kernels/k:1")
    push_artifact(RegistryClient(), ref, "amd64", tmp / "k", tmp / "i", key=None)


def _plan_arg(registry: RunningRegistry, tmp: Path, cmdline: str) -> str:
    plan = tmp / "plan.hcl"
    plan.write_text(
        f'target "k" {{\n  kernel = "{registry.address}/kernels/k:1"\n  cmdline = "{cmdline}"\n}}\n'
    )
    ref = f"{registry.address}/plans/web:latest"
    push_plan(registry.url, "plans/web", "latest", plan.read_bytes())
    return f"cloudboot.plan={ref} cloudboot.cosign=off"


def _staged(root: Path) -> tuple[bytes, bytes]:
    esp = root / "dev/vda1"
    return _mtype(esp, "::/EFI/Linux/k-vmlinuz.efi"), _mtype(esp, "::/EFI/Linux/k-initrd")


def _reset_nvram(root: Path) -> None:
    """What the dev loop's restart does: Boot0001 gone (the settled store)."""
    EfiVarStore(root / "sys/firmware/efi/efivars").delete("Boot0001", GLOBAL_VARIABLE_GUID)


def test_a_cmdline_edit_keeps_the_staged_files_and_new_layers_replace_them(
    machine: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    _artifact(tmp_path, registry, KERNEL_A, INITRD_A)
    status, log, _ = _run(machine, _plan_arg(registry, tmp_path, "console=ttyS0 one"))
    assert status == 0 and "staged 32768 + 4096 bytes on vda" in log, log
    assert _staged(machine) == (KERNEL_A, INITRD_A)

    _reset_nvram(machine)
    status, log, _ = _run(machine, _plan_arg(registry, tmp_path, "console=ttyS0 two"))
    assert status == 0 and "kept the staged 32768 + 4096 bytes" in log, log
    assert "Boot0001 = cloud-boot k" in log

    _artifact(tmp_path, registry, KERNEL_B, INITRD_B)  # the tag moves: new layers
    _reset_nvram(machine)
    status, log, _ = _run(machine, _plan_arg(registry, tmp_path, "console=ttyS0 two"))
    assert status == 0 and "staged 32768 + 4096 bytes" in log, log
    assert _staged(machine) == (KERNEL_B, INITRD_B)


def test_when_the_firmware_comes_back_the_files_are_written_again(
    machine: Path, registry: RunningRegistry, tmp_path: Path
) -> None:
    """A staged kernel the firmware cannot load (here: truncated behind the stamp's back)
    sends it to the next boot option, the bootstrap, with our Boot0001 still set: that
    pass must not trust the stamp, or the machine would loop."""
    _artifact(tmp_path, registry, KERNEL_A, INITRD_A)
    arg = _plan_arg(registry, tmp_path, "console=ttyS0")
    assert _run(machine, arg)[0] == 0
    esp = machine / "dev/vda1"
    (tmp_path / "short").write_bytes(b"MZ")
    run(["mcopy", "-o", "-i", esp, tmp_path / "short", "::/EFI/Linux/k-vmlinuz.efi"])

    status, log, _ = _run(machine, arg)  # Boot0001 untouched: the firmware came back
    assert status == 0, log
    assert "Boot0001 for 'k' was already set: writing its files again" in log
    assert _staged(machine) == (KERNEL_A, INITRD_A)


def test_disk_content_hashes_the_bytes_wherever_they_lie(tmp_path: Path) -> None:
    """Runs on a device, holes included, give the content of the same bytes in memory,
    across the 1 MiB reading pieces; one byte changed changes it; so does a role."""
    body = bytes(range(256)) * 8192 + b"tail"  # 2 MiB + 4: three pieces
    device = tmp_path / "dev"
    device.write_bytes(b"x" * 4096 + body)
    runs = stage.DeviceRuns(
        device, ((4096, len(body) - 100), (None, 50), (4096 + len(body) - 100, 100))
    )
    flat = body[:-100] + bytes(50) + body[-100:]
    assert runs.read() == flat
    same = stage.disk_content(runs, b"initrd")
    assert same == stage.disk_content(flat, b"initrd")
    changed = bytearray(flat)
    changed[1 << 20] ^= 1
    assert stage.disk_content(bytes(changed), b"initrd") != same
    assert stage.disk_content(flat, None) != same
    assert stage.disk_content(b"initrd", flat) != same  # the roles are in the lines


def test_a_disk_target_keeps_its_files_until_one_byte_of_them_changes(
    machine: Path, registry: RunningRegistry
) -> None:
    """The disk's metadata cannot say the kernel changed (here one byte is flipped inside
    the ext4 image: same inode, times, extents, size), so only its bytes can."""
    push_plan(registry.url, "plans/web", "latest", _plan())
    arg = f"console=ttyS0 cloudboot.plan=oci://{registry.address}/plans/web cloudboot.cosign=off"
    staged = f"staged {len(KERNEL)} + {len(INITRD)} bytes on vda"
    status, log, _ = _run(machine, arg)
    assert status == 0 and staged in log, log

    _reset_nvram(machine)
    status, log, _ = _run(machine, arg)
    assert status == 0 and f"kept the {staged}" in log, log

    image = machine / "dev/vdb1"
    data = bytearray(image.read_bytes())
    at = data.find(KERNEL[: 1 << 16]) + len(KERNEL) // 2
    assert at > len(KERNEL) // 2
    data[at] ^= 0xFF
    image.write_bytes(data)
    _reset_nvram(machine)
    status, log, _ = _run(machine, arg)
    assert status == 0 and staged in log and "kept" not in log, log
    esp = machine / "dev/vda1"
    assert _mtype(esp, "::/EFI/Linux/debian-vmlinuz.efi") == bytes(
        data[at - len(KERNEL) // 2 :][: len(KERNEL)]
    )
