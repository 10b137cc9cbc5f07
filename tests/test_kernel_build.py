"""`cloudboot kernel build` and `kernel = { build = SRC }` against a tiny, real Kbuild-shaped tree.

A real Linux build takes about an hour on two cores, so the source tree here is a small
Makefile with the same interface as Linux's top level: it insists on O= (out of tree),
honours ARCH= and CROSS_COMPILE=, and has the olddefconfig, bzImage/Image, modules,
modules_install INSTALL_MOD_PATH= and kernelrelease goals. Its "image" is the Debian
cloud kernel (a real EFI-stub PE, so the UKI builder accepts it) and its "modules" are
Debian's fat/vfat modules. Every make invocation appends a line to a counter file, so
a test can prove that a cached run started no make at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guest.contract.arch import Arch
from guest.contract.gpt import SECTOR, read_gpt
from publisher.media import cpio
from publisher.media.build import build_boot_iso
from publisher.media.debs import DebCache
from publisher.media.kernelbuild import (
    KernelBuildCache,
    KernelBuildError,
    KernelBuildSpec,
    git_status_paths,
    make_variables,
)
from publisher.media.kernelsrc import KernelSources
from publisher.media.pe import section_data
from publisher.media.recipe import RecipeError, load_recipe
from publisher.run import run
from tests.qemu_boot import recipe_text

CLI = Path(sys.executable).parent / "cloudboot"

MAKEFILE = """\
# A Kbuild-shaped stand-in for Linux's top-level Makefile (same goals and variables).
ifeq ($(O),)
$(error build out of tree: O= is required)
endif
COUNTER := {counter}
VMLINUZ := {vmlinuz}
FATDIR := {fatdir}
LOCALVERSION := $(shell sed -n 's/^CONFIG_LOCALVERSION="\\(.*\\)"/\\1/p' $(O)/.config 2>/dev/null)
KERNELRELEASE := 6.1.0-tiny$(LOCALVERSION)
SRCARCH := $(if $(filter x86_64,$(ARCH)),x86,$(ARCH))

olddefconfig:
\t@echo "olddefconfig ARCH=$(ARCH) CROSS_COMPILE=$(CROSS_COMPILE)" >> $(COUNTER)
\t@echo "CONFIG_OLDDEFCONFIG_RAN=y" >> $(O)/.config

bzImage Image:
\t@echo "$@ ARCH=$(ARCH)" >> $(COUNTER)
\t@mkdir -p $(O)/arch/$(SRCARCH)/boot
\t@if grep -q '^CONFIG_BROKEN=y' $(O)/.config; then \\
\t  echo "init/main.c:1: error: broken" >&2; exit 2; fi
\t@cat $(VMLINUZ) > $(O)/arch/$(SRCARCH)/boot/$@

modules:
\t@echo "modules" >> $(COUNTER)
\t@mkdir -p $(O)/fs/fat && cp $(FATDIR)/*.ko $(O)/fs/fat/

modules_install:
\t@test -n "$(INSTALL_MOD_PATH)"
\t@echo "modules_install" >> $(COUNTER)
\t@mkdir -p $(INSTALL_MOD_PATH)/lib/modules/$(KERNELRELEASE)/kernel/fs/fat
\t@cp $(O)/fs/fat/*.ko $(INSTALL_MOD_PATH)/lib/modules/$(KERNELRELEASE)/kernel/fs/fat/

kernelrelease:
\t@echo $(KERNELRELEASE)
"""


class TinyKernel:
    """A source tree, a config, a counter of make runs and a private per-user cache."""

    def __init__(self, root: Path) -> None:
        pkg = DebCache().kernel_package("linux-image-cloud-amd64", Arch.X86_64)
        self.vmlinuz = max((pkg.root / "boot").glob("vmlinuz-*"))
        uname = self.vmlinuz.name.removeprefix("vmlinuz-")
        fatdir = pkg.root / "lib" / "modules" / uname / "kernel" / "fs" / "fat"
        self.src = root / "linux"
        (self.src / "init").mkdir(parents=True)
        self.counter = root / "make-runs.txt"
        self.counter.write_text("")
        (self.src / "Makefile").write_text(
            MAKEFILE.format(counter=self.counter, vmlinuz=self.vmlinuz, fatdir=fatdir)
        )
        (self.src / "init" / "main.c").write_text("int main(void) { return 0; }\n")
        self.config = root / "tiny.config"
        self.config.write_text("CONFIG_MODULES=y\nCONFIG_EFI_STUB=y\n")
        self.cache = root / "xdg-cache"
        self.env = {**os.environ, "XDG_CACHE_HOME": str(self.cache)}
        self.builds = self.cache / "cloudboot" / "kernel-build"

    def runs(self) -> list[str]:
        return self.counter.read_text().splitlines()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            str(CLI),
            "kernel",
            "build",
            "--src",
            str(self.src),
            "--config",
            str(self.config),
            "-j",
            "2",
            *args,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.builds.iterdir() if p.name not in ("logs", "locks"))


@pytest.fixture
def tiny(tmp_path: Path) -> TinyKernel:
    return TinyKernel(tmp_path)


def test_cli_builds_out_of_tree_then_prints_cached(tiny: TinyKernel) -> None:
    before = sorted(p.relative_to(tiny.src) for p in tiny.src.rglob("*"))
    first = json.loads(tiny.cli("--arch", "x86_64", "--json").stdout)
    assert first["cached"] is False and first["uname"] == "6.1.0-tiny"
    assert Path(first["image"]).read_bytes() == tiny.vmlinuz.read_bytes()
    assert first["image"].endswith("/obj/arch/x86/boot/bzImage")
    modules = Path(first["modules_dir"])
    assert modules.name == "6.1.0-tiny" and (modules / "kernel/fs/fat/vfat.ko").is_file()
    assert Path(first["dir"]) == tiny.builds / first["key"]
    runs = tiny.runs()
    # `make -j2 bzImage modules` builds both goals at once, so their order is free
    assert runs[0] == "olddefconfig ARCH=x86_64 CROSS_COMPILE="
    assert sorted(runs[1:3]) == ["bzImage ARCH=x86_64", "modules"]
    assert runs[3:] == ["modules_install"]
    assert (
        (tiny.builds / first["key"] / "obj" / ".config")
        .read_text()
        .endswith("CONFIG_OLDDEFCONFIG_RAN=y\n")
    )
    assert sorted(p.relative_to(tiny.src) for p in tiny.src.rglob("*")) == before  # O= honoured

    again = tiny.cli("--arch", "x86_64")
    assert again.stdout.startswith(f"cached {first['key']}\n")
    assert f"image    {first['image']}" in again.stdout
    assert len(tiny.runs()) == 4  # no make at all

    # every input of the key invalidates: config, source, arch, make variables
    tiny.config.write_text(tiny.config.read_text() + 'CONFIG_LOCALVERSION="-b"\n')
    changed = json.loads(tiny.cli("--arch", "x86_64", "--json").stdout)
    assert changed["cached"] is False and changed["uname"] == "6.1.0-tiny-b"
    (tiny.src / "init" / "main.c").write_text("int main(void) { return 1; }\n")
    edited = json.loads(tiny.cli("--arch", "x86_64", "--json").stdout)
    arm = json.loads(tiny.cli("--arch", "aarch64", "--json").stdout)
    assert arm["image"].endswith("/obj/arch/arm64/boot/Image")
    assert "olddefconfig ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-" in tiny.runs()
    llvm = json.loads(tiny.cli("--arch", "x86_64", "--make-var", "LLVM=1", "--json").stdout)
    keys = {first["key"], changed["key"], edited["key"], arm["key"], llvm["key"]}
    assert len(keys) == 5 and not any(e["cached"] for e in (edited, arm, llvm))
    assert tiny.entries() == sorted(keys)
    assert tiny.cli("--arch", "x86_64", "--make-var", "LLVM=1").stdout.startswith("cached")


def test_failed_make_leaves_no_cache_entry(tiny: TinyKernel) -> None:
    good = tiny.config.read_text()
    tiny.config.write_text(good + "CONFIG_BROKEN=y\n")
    failed = tiny.cli("--arch", "x86_64", check=False)
    assert failed.returncode != 0
    assert "error: command failed with status 2" in failed.stderr
    assert "init/main.c:1: error: broken" in failed.stderr  # the tail of make's output
    assert "full log: " in failed.stderr and "no cache entry was written" in failed.stderr
    assert tiny.entries() == []  # neither a finished entry nor a .partial one
    runs = len(tiny.runs())
    assert tiny.cli("--arch", "x86_64", check=False).returncode != 0
    assert len(tiny.runs()) > runs  # tried again: a failure is never cached
    tiny.config.write_text(good)
    assert json.loads(tiny.cli("--arch", "x86_64", "--json").stdout)["cached"] is False
    assert len(tiny.entries()) == 1


def test_git_tree_identity(tiny: TinyKernel, tmp_path: Path) -> None:
    git = ["git", "-C", str(tiny.src), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    run([*git, "init", "-q"])
    run([*git, "add", "-A"])
    run([*git, "commit", "-q", "-m", "v1"])
    cache = KernelBuildCache(tmp_path / "kb")
    spec = KernelBuildSpec.create(tiny.src, Arch.X86_64, tiny.config)
    clean = cache.key(spec)
    assert cache.key(spec) == clean
    main = tiny.src / "init" / "main.c"
    main.write_text("int main(void) { return 2; }\n")
    dirty = cache.key(spec)
    main.write_text("int main(void) { return 3; }\n")  # same status line, other content
    os.utime(main, ns=(1, 1))
    assert len({clean, dirty, cache.key(spec)}) == 3
    run([*git, "commit", "-q", "-am", "v2"])
    committed = cache.key(spec)
    (tiny.src / "init" / "new.c").write_text("\n")
    assert len({clean, dirty, committed, cache.key(spec)}) == 4
    assert git_status_paths(b" M init/main.c\0?? init/new.c\0R  b.c\0a.c\0") == [
        "init/main.c",
        "init/new.c",
        "b.c",
        "a.c",
    ]
    with pytest.raises(KernelBuildError, match="'O' cannot be set"):
        make_variables(Arch.X86_64, extra={"O": "/elsewhere"})


def test_recipe_build_source_into_boot_iso(tiny: TinyKernel, tmp_path: Path) -> None:
    recipe_path = tmp_path / "kernel" / "recipe.toml"
    recipe_path.parent.mkdir()
    text = recipe_text().replace("../cosign.pub", "")
    text = text.replace(
        'kernel = { deb = "linux-image-cloud-amd64" }',
        f'kernel = {{ build = "../linux", config = "{tiny.config}" }}',
    )
    text = re.sub(r"(?ms)^modules = \[.*?\]", 'modules = ["vfat"]', text)
    recipe_path.write_text(text)
    recipe = load_recipe(recipe_path)
    out = tmp_path / "boot.iso"
    sources = KernelSources(builds=KernelBuildCache(tiny.builds))
    with pytest.raises(RecipeError, match=r"no cached kernel build .*run: cloudboot kernel build"):
        build_boot_iso(recipe, out, [Arch.X86_64], sources=sources)
    assert tiny.runs() == [] and not out.exists()
    sources.build_missing = True
    built = build_boot_iso(recipe, out, [Arch.X86_64], sources=sources)
    assert not built.skipped and len(tiny.runs()) == 4
    data = out.read_bytes()
    (esp,) = read_gpt(data[: 34 * SECTOR]).partitions
    part = tmp_path / "esp.img"
    part.write_bytes(data[esp.first_lba * SECTOR : (esp.last_lba + 1) * SECTOR])
    run(["mcopy", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "uki.efi"])
    uki = (tmp_path / "uki.efi").read_bytes()
    kernel = tiny.vmlinuz.read_bytes()
    assert section_data(uki, ".linux")[: len(kernel)] == kernel
    assert section_data(uki, ".uname") == b"6.1.0-tiny"
    initrd = {e.path for e in cpio.parse_newc(cpio.decompress(section_data(uki, ".initrd")))}
    assert {
        "/lib/modules/6.1.0-tiny/kernel/fs/fat/vfat.ko",
        "/lib/modules/6.1.0-tiny/kernel/fs/fat/fat.ko",
    } <= initrd
    # nothing changed: the cached kernel build is found again and the image is up to date
    assert build_boot_iso(recipe, out, [Arch.X86_64], sources=sources).skipped
    assert len(tiny.runs()) == 4
