"""EFI device paths, load options, BootOrder and efivarfs files, checked byte for byte.

virt-firmware (GPL, tests only) is the independent reader: what we build must parse there
to the same fields, and what it builds must parse here.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from virt.firmware.efi import bootentry as vf_bootentry, devpath as vf_devpath, ucs16 as vf_ucs16

from guest.contract.efi import GLOBAL_VARIABLE_GUID, boot_variable_name, bootorder
from guest.contract.efi.devpath import DevicePath, End, FilePath, HardDrive, RawNode
from guest.contract.efi.efivarfs import EfiVarStore
from guest.contract.efi.loadoption import LoadOption, cloudboot_entry, safe_name, staged_paths
from guest.contract.errors import FormatError

PART = HardDrive(1, 2048, 522207, uuid.UUID("0f3a4c1e-8a27-4b6c-9d2e-5a7b1c3d9e01"))


def test_hd_node_bytes_match_the_spec_layout() -> None:
    raw = bytes(PART)
    assert raw[:4] == bytes.fromhex("04012a00")
    assert struct.unpack_from("<IQQ", raw, 4) == (1, 2048, 522207)
    assert raw[24:40] == PART.partition_guid.bytes_le
    assert raw[40:] == b"\x02\x02"


def test_file_and_end_nodes() -> None:
    raw = bytes(FilePath(r"\EFI\Linux\t-vmlinuz.efi"))
    assert raw[:2] == b"\x04\x04"
    assert struct.unpack_from("<H", raw, 2)[0] == len(raw)
    assert raw[4:].decode("utf-16-le") == "\\EFI\\Linux\\t-vmlinuz.efi\0"
    assert bytes(End()) == bytes.fromhex("7fff0400")


def test_cloudboot_entry_round_trips_through_virt_firmware() -> None:
    entry = cloudboot_entry("web server", PART, "console=ttyS0 quiet")
    data = bytes(entry)
    theirs = vf_bootentry.BootEntry(data=data)
    assert theirs.attr == 1
    assert str(theirs.title) == "cloud-boot web server"
    assert len(theirs.devicepath) == 2
    assert str(theirs.devicepath[0].get_partuuid()) == str(PART.partition_guid)
    assert struct.unpack_from("<LQQ", theirs.devicepath[0].data) == (1, 2048, 522207)
    assert str(theirs.devicepath[1].get_filepath()) == r"\EFI\Linux\web_server-vmlinuz.efi"
    assert theirs.optdata.decode("utf-16-le") == (
        "initrd=\\EFI\\Linux\\web_server-initrd console=ttyS0 quiet\0"
    )
    assert bytes(theirs) == data
    ours = LoadOption.from_bytes(data)
    assert ours == entry
    assert ours.optional_text() == r"initrd=\EFI\Linux\web_server-initrd console=ttyS0 quiet"


def test_we_parse_what_virt_firmware_builds() -> None:
    path = vf_devpath.DevicePath()
    hd = vf_devpath.DevicePathElem()
    hd.set_gpt(3, 0x800, 0x1000, "11111111-2222-3333-4444-555555555555")
    path.append(hd)
    fp = vf_devpath.DevicePathElem()
    fp.set_filepath(r"\EFI\BOOT\BOOTX64.EFI")
    path.append(fp)
    entry = vf_bootentry.BootEntry(
        attr=1, title=vf_ucs16.from_string("UEFI thing"), devicepath=path, optdata=b"\x01\x02"
    )
    ours = LoadOption.from_bytes(bytes(entry))
    assert ours.description == "UEFI thing"
    assert ours.device_path.nodes == (
        HardDrive(3, 0x800, 0x1000, uuid.UUID("11111111-2222-3333-4444-555555555555")),
        FilePath(r"\EFI\BOOT\BOOTX64.EFI"),
    )
    assert ours.optional_data == b"\x01\x02" and ours.optional_text() is None
    assert bytes(ours) == bytes(entry)


def test_unknown_nodes_survive_a_round_trip() -> None:
    pci = RawNode(0x01, 0x01, b"\x00\x02")  # PCI(2,0)
    option = LoadOption(1, "disk", DevicePath((pci, FilePath("\\x"))))
    assert LoadOption.from_bytes(bytes(option)) == option


def test_truncated_load_option_names_the_offset() -> None:
    data = bytes(cloudboot_entry("t", PART, ""))
    with pytest.raises(FormatError, match=r"@0x4"):
        LoadOption.from_bytes(data[:40])


@given(
    st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=40)
)
def test_safe_name_only_keeps_the_safe_set(name: str) -> None:
    safe = safe_name(name)
    assert len(safe) == len(name)
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in safe)


def test_staged_paths() -> None:
    assert staged_paths("debian/13 (trixie)") == (
        r"\EFI\Linux\debian_13__trixie_-vmlinuz.efi",
        r"\EFI\Linux\debian_13__trixie_-initrd",
    )


def test_boot_variable_name() -> None:
    assert boot_variable_name(1) == "Boot0001" and boot_variable_name(0xABC) == "Boot0ABC"


@pytest.mark.parametrize(
    ("before", "after"),
    [([], [1]), ([0, 2], [1, 0, 2]), ([0, 1, 2], [1, 0, 2]), ([1, 0], None), ([1, 0, 1], [1, 0])],
)
def test_bootorder_rule(before: list[int], after: list[int] | None) -> None:
    assert bootorder.put_first(before, 1) == after


def test_bootorder_bytes() -> None:
    assert bootorder.serialise([1, 0, 0x10]) == bytes.fromhex("010000001000")
    assert bootorder.parse(bytes.fromhex("010000001000")) == [1, 0, 0x10]
    with pytest.raises(FormatError):
        bootorder.parse(b"\x01")


def test_efivarfs_write_is_attrs_plus_data_and_shorter_rewrite_truncates(tmp_path: Path) -> None:
    store = EfiVarStore(tmp_path)
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, b"\x01\x00\x00\x00\x02\x00")
    path = tmp_path / "BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert path.read_bytes() == b"\x07\x00\x00\x00\x01\x00\x00\x00\x02\x00"
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, b"\x01\x00")
    var = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    assert var is not None and var.attributes == 7 and var.data == b"\x01\x00"
    assert store.delete("BootOrder", GLOBAL_VARIABLE_GUID)
    assert not store.delete("BootOrder", GLOBAL_VARIABLE_GUID)
    assert store.read("BootOrder", GLOBAL_VARIABLE_GUID) is None
