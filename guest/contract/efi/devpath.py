"""UEFI device paths: the HD(), File() and End nodes of docs/wire-formats.md §5.7,
and a generic node.

A device path is a chain of nodes ``type u8, subtype u8, length u16`` + body, closed by an
End node. We build the ``HD(GPT partition) + File(path) + End`` shape that firmware can
resolve without scanning every disk, and parse any path back node by node (unknown nodes
are kept as raw bytes so a round-trip never loses anything).
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

from guest.contract.efi import ucs16
from guest.contract.errors import FormatError

_HEADER = struct.Struct("<BBH")
_HD_BODY = struct.Struct("<IQQ16sBB")


class NodeType(enum.IntEnum):
    HARDWARE = 0x01
    ACPI = 0x02
    MESSAGING = 0x03
    MEDIA = 0x04
    BBS = 0x05
    END = 0x7F


class MediaSubtype(enum.IntEnum):
    HARD_DRIVE = 0x01
    CDROM = 0x02
    FILE_PATH = 0x04


END_ENTIRE = 0xFF
MBR_TYPE_GPT = 0x02
SIGNATURE_TYPE_GUID = 0x02


@dataclass(frozen=True)
class RawNode:
    """Any node we do not interpret; kept byte for byte."""

    type: int
    subtype: int
    body: bytes

    def __bytes__(self) -> bytes:
        return _HEADER.pack(self.type, self.subtype, _HEADER.size + len(self.body)) + self.body

    def __str__(self) -> str:
        return f"Node({self.type:#04x},{self.subtype:#04x},{self.body.hex()})"


@dataclass(frozen=True)
class HardDrive:
    """HD(): a GPT partition by number, start LBA, size in sectors and partition GUID."""

    partition_number: int
    start_lba: int
    size_lba: int
    partition_guid: uuid.UUID

    def __bytes__(self) -> bytes:
        body = _HD_BODY.pack(
            self.partition_number,
            self.start_lba,
            self.size_lba,
            self.partition_guid.bytes_le,  # mixed-endian, as the GPT stores it
            MBR_TYPE_GPT,
            SIGNATURE_TYPE_GUID,
        )
        return _HEADER.pack(NodeType.MEDIA, MediaSubtype.HARD_DRIVE, 4 + len(body)) + body

    def __str__(self) -> str:
        return (
            f"HD({self.partition_number},GPT,{self.partition_guid},"
            f"{self.start_lba:#x},{self.size_lba:#x})"
        )

    @classmethod
    def from_body(cls, body: bytes, offset: int) -> HardDrive:
        if len(body) != _HD_BODY.size:
            raise FormatError(f"HD() node body is {len(body)} bytes, expected 38", offset=offset)
        number, start, size, sig, mbr_type, sig_type = _HD_BODY.unpack(body)
        if mbr_type != MBR_TYPE_GPT or sig_type != SIGNATURE_TYPE_GUID:
            raise FormatError(
                f"HD() node is not GPT/GUID (mbr type {mbr_type}, signature type {sig_type})",
                offset=offset,
                what="device path",
            )
        return cls(number, start, size, uuid.UUID(bytes_le=sig))


@dataclass(frozen=True)
class FilePath:
    r"""File(): a path on the partition, backslash-separated (``\EFI\Linux\t-vmlinuz.efi``)."""

    path: str

    def __bytes__(self) -> bytes:
        body = ucs16.encode(self.path)
        return _HEADER.pack(NodeType.MEDIA, MediaSubtype.FILE_PATH, 4 + len(body)) + body

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class End:
    """The End Entire Device Path node that closes every device path."""

    def __bytes__(self) -> bytes:
        return _HEADER.pack(NodeType.END, END_ENTIRE, 4)

    def __str__(self) -> str:
        return ""


Node = RawNode | HardDrive | FilePath | End


@dataclass(frozen=True)
class DevicePath:
    """One device path instance: its nodes, the End node implied at the end."""

    nodes: tuple[Node, ...]

    def __bytes__(self) -> bytes:
        return b"".join(bytes(n) for n in self.nodes) + bytes(End())

    def __str__(self) -> str:
        return "/".join(str(n) for n in self.nodes)

    @classmethod
    def hd_file(cls, partition: HardDrive, path: str) -> DevicePath:
        """The shape Boot0001 uses (docs/wire-formats.md §5.7): ``HD(...)/File(path)``."""
        return cls((partition, FilePath(path)))

    @classmethod
    def from_bytes(cls, data: bytes, base: int = 0) -> DevicePath:
        """Parse nodes up to End-entire; ``base`` offsets byte positions in errors."""
        nodes: list[Node] = []
        pos = 0
        while True:
            if pos + _HEADER.size > len(data):
                raise FormatError(
                    "device path ends without an End node", offset=base + pos, what="device path"
                )
            kind, subtype, length = _HEADER.unpack_from(data, pos)
            if length < _HEADER.size or pos + length > len(data):
                raise FormatError(
                    f"device path node length {length} out of range",
                    offset=base + pos,
                    what="device path",
                )
            body = data[pos + _HEADER.size : pos + length]
            if kind == NodeType.END and subtype == END_ENTIRE:
                if pos + length != len(data):
                    raise FormatError(
                        "bytes after the End node", offset=base + pos + length, what="device path"
                    )
                return cls(tuple(nodes))
            nodes.append(_node(kind, subtype, body, base + pos))
            pos += length


def _node(kind: int, subtype: int, body: bytes, offset: int) -> Node:
    if kind == NodeType.MEDIA and subtype == MediaSubtype.HARD_DRIVE:
        return HardDrive.from_body(body, offset)
    if kind == NodeType.MEDIA and subtype == MediaSubtype.FILE_PATH:
        text, end = ucs16.decode_at(body, 0, what="File() node")
        if end != len(body):
            raise FormatError(
                "File() node has bytes after its NUL", offset=offset + 4 + end, what="device path"
            )
        return FilePath(text)
    return RawNode(kind, subtype, body)
