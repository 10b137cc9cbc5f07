"""PE/COFF images (Microsoft PE format, PE32+): read the headers, append data sections.

A UKI is the systemd stub with extra sections, and objcopy cannot write an aarch64 PE
on an x86 host, so we do it on bytes: new headers go into the slack between the section
table and the first section's raw data, new raw data at the file end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from guest.contract.errors import FormatError

PE32_PLUS = 0x20B
SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
#: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: what every UKI payload section is.
DATA_SECTION = 0x40000040
MACHINE_NAMES = {0x8664: "x86_64", 0xAA64: "aarch64"}
_SECURITY_DIR = 4


def round_up(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int
    characteristics: int = DATA_SECTION

    def header_bytes(self) -> bytes:
        return SECTION_HEADER.pack(
            self.name.encode().ljust(8, b"\0"),
            self.virtual_size,
            self.virtual_address,
            self.raw_size,
            self.raw_pointer,
            0,
            0,
            0,
            0,
            self.characteristics,
        )


@dataclass(frozen=True)
class PeHeaders:
    """The fields of a PE32+ image the section appender needs, with their file offsets."""

    machine: int
    coff_offset: int  # offset of the COFF file header (after "PE\0\0")
    optional_offset: int
    optional_size: int
    symbol_table: int
    symbol_count: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    sections: tuple[Section, ...]

    @property
    def section_table_end(self) -> int:
        return self.optional_offset + self.optional_size + 40 * len(self.sections)

    @property
    def arch(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"machine {self.machine:#x}")


def parse_pe(data: bytes, *, what: str = "PE image") -> PeHeaders:
    """Parse the DOS stub, COFF header, PE32+ optional header and section table."""
    if data[:2] != b"MZ" or len(data) < 0x40:
        raise FormatError("not a PE image (no MZ signature)", offset=0, what=what)
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise FormatError("no PE signature", offset=pe_offset, what=what)
    coff = pe_offset + 4
    machine, nsections, _, symtab, nsyms, opt_size, _ = struct.unpack_from("<HHIIIHH", data, coff)
    opt = coff + 20
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic != PE32_PLUS:
        raise FormatError(f"not PE32+ (optional header magic {magic:#x})", offset=opt, what=what)
    sect_align, file_align = struct.unpack_from("<II", data, opt + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", data, opt + 56)
    sections = []
    for i in range(nsections):
        raw = SECTION_HEADER.unpack_from(data, opt + opt_size + 40 * i)
        name = raw[0].rstrip(b"\0").decode(errors="replace")
        sections.append(Section(name, raw[1], raw[2], raw[3], raw[4], raw[9]))
    return PeHeaders(
        machine, coff, opt, opt_size, symtab, nsyms, sect_align, file_align, size_of_image,
        size_of_headers, tuple(sections),
    )  # fmt: skip


def add_sections(
    image: bytes, new: list[tuple[str, bytes, int | None]], *, what: str = "PE image"
) -> bytes:
    """Append data sections ``(name, data, virtual_size or None)`` to a PE32+ image.

    Follows the UKI rules: a trailing COFF symbol table is dropped first; each section's raw
    data goes at the file end aligned to FileAlignment; its VMA follows the previous
    section's end aligned to SectionAlignment; SizeOfImage, SizeOfInitializedData and
    NumberOfSections are updated and the CheckSum and any (now invalid) Authenticode
    certificate directory are cleared.
    """
    pe = parse_pe(image, what=what)
    out = bytearray(image)
    if pe.symbol_table:
        if pe.symbol_table < max((s.raw_pointer + s.raw_size for s in pe.sections), default=0):
            raise FormatError("COFF symbol table is not at the end", offset=pe.symbol_table,
                              what=what)  # fmt: skip
        del out[pe.symbol_table :]
        struct.pack_into("<II", out, pe.coff_offset + 8, 0, 0)
    room = (pe.size_of_headers - pe.section_table_end) // 40
    if len(new) > room:
        raise FormatError(
            f"no room for {len(new)} more section headers (room for {room})",
            offset=pe.section_table_end,
            what=what,
        )
    names = [name for name, _, _ in new]
    clash = sorted({s.name for s in pe.sections} & set(names))
    if clash:
        raise FormatError(f"image already has section {clash[0]}", what=what)
    vma = max(s.virtual_address + s.virtual_size for s in pe.sections)
    header_pos = pe.section_table_end
    added_init = 0
    for name, data, vsize in new:
        vma = round_up(vma, pe.section_alignment)
        out += bytes(-len(out) % pe.file_alignment)
        raw_size = round_up(len(data), pe.file_alignment)
        section = Section(name, vsize if vsize is not None else len(data), vma, raw_size, len(out))
        out[header_pos : header_pos + 40] = section.header_bytes()
        out += data + bytes(raw_size - len(data))
        header_pos += 40
        vma += section.virtual_size
        added_init += raw_size
    opt = pe.optional_offset
    struct.pack_into("<H", out, pe.coff_offset + 2, len(pe.sections) + len(new))
    (init_size,) = struct.unpack_from("<I", out, opt + 8)
    struct.pack_into("<I", out, opt + 8, init_size + added_init)
    struct.pack_into("<I", out, opt + 56, round_up(vma, pe.section_alignment))
    struct.pack_into("<I", out, opt + 64, 0)
    ndirs_pos = opt + 108
    (ndirs,) = struct.unpack_from("<I", out, ndirs_pos)
    if ndirs > _SECURITY_DIR:
        struct.pack_into("<II", out, ndirs_pos + 4 + 8 * _SECURITY_DIR, 0, 0)
    return bytes(out)


def section_data(image: bytes, name: str) -> bytes:
    """The raw bytes of a named section, trimmed to its VirtualSize (tests, inspection)."""
    pe = parse_pe(image)
    for s in pe.sections:
        if s.name == name:
            return image[s.raw_pointer : s.raw_pointer + min(s.raw_size, s.virtual_size)]
    raise FormatError(f"no section {name!r}", what="PE image")


def image_size(image: bytes) -> int | None:
    """SizeOfImage of a PE kernel (the .linux VirtualSize rule), None if it is not a PE."""
    try:
        return parse_pe(image).size_of_image
    except FormatError:
        return None
