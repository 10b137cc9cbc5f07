"""publisher.media.pe/uki: sections checked with pefile, on the real Debian stubs and kernels."""

from __future__ import annotations

import pefile
import pytest

from guest.contract.arch import Arch
from guest.contract.errors import FormatError
from publisher.media.build import resolve_arch
from publisher.media.debs import DebCache
from publisher.media.pe import round_up, section_data
from publisher.media.uki import UkiParts, build_uki
from tests.qemu_boot import repo_recipe


@pytest.mark.parametrize("arch", list(Arch))
def test_uki_sections_follow_the_spec(arch: Arch) -> None:
    recipe = repo_recipe()
    inputs = resolve_arch(recipe.for_arch(arch), recipe, DebCache(), None, False)
    stub, kernel = inputs.stub.read_bytes(), inputs.kernel.vmlinuz.read_bytes()
    uki = build_uki(UkiParts(stub, kernel, b"INITRD" * 1000, "console=x", "6.1.0-test"), arch)
    pe = pefile.PE(data=uki)
    names = [s.Name.rstrip(b"\0").decode() for s in pe.sections]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    sect_align = pe.OPTIONAL_HEADER.SectionAlignment
    file_align = pe.OPTIONAL_HEADER.FileAlignment
    prev = None
    for s in pe.sections:
        if prev is not None and s.Name.rstrip(b"\0").decode() in names[-5:]:
            assert s.VirtualAddress == round_up(prev.VirtualAddress + prev.Misc_VirtualSize,
                                                sect_align)  # fmt: skip
            assert s.PointerToRawData % file_align == 0
        prev = s
    kpe = pefile.PE(data=kernel, fast_load=True)
    linux = pe.sections[-1]
    assert linux.Misc_VirtualSize == kpe.OPTIONAL_HEADER.SizeOfImage
    assert pe.OPTIONAL_HEADER.SizeOfImage == round_up(
        linux.VirtualAddress + linux.Misc_VirtualSize, sect_align
    )
    assert pe.FILE_HEADER.PointerToSymbolTable == 0 and pe.OPTIONAL_HEADER.CheckSum == 0
    assert section_data(uki, ".cmdline") == b"console=x"
    assert section_data(uki, ".uname") == b"6.1.0-test"
    assert section_data(uki, ".linux")[: len(kernel)] == kernel
    assert section_data(uki, ".initrd") == b"INITRD" * 1000
    # the stub's own code is untouched
    for s in pe.sections[: len(names) - 5]:
        assert s.get_data()[:64] == pefile.PE(data=stub).sections[names.index(
            s.Name.rstrip(b"\0").decode())].get_data()[:64]  # fmt: skip


def test_wrong_arch_kernel_refused() -> None:
    recipe = repo_recipe()
    x86 = resolve_arch(recipe.for_arch(Arch.X86_64), recipe, DebCache(), None, False)
    arm = resolve_arch(recipe.for_arch(Arch.AARCH64), recipe, DebCache(), None, False)
    with pytest.raises(FormatError, match="kernel is for aarch64"):
        build_uki(UkiParts(x86.stub.read_bytes(), arm.kernel.vmlinuz.read_bytes(), b"", ""),
                  Arch.X86_64)  # fmt: skip
    with pytest.raises(FormatError, match="not a PE image"):
        build_uki(UkiParts(b"ELF", b"", b"", ""), Arch.X86_64)
