"""The workspace config: typed values, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.contract.arch import Arch
from publisher.config import (
    Accel,
    Backend,
    ConfigError,
    load_config,
    parse_config,
    render_template,
)


def write(root: Path, text: str) -> Path:
    (root / "cloudboot.toml").write_text(text)
    return root


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.source is None
    assert config.vm.backend is Backend.AUTO
    assert config.build.iso == tmp_path / "build/boot.iso"
    assert config.plan_ref(tmp_path / "plans/prod.hcl") == "127.0.0.1:5000/cloudboot/prod:latest"


def test_values_are_typed_and_paths_resolved(tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(b"")
    write(
        tmp_path,
        '[vm]\nbackend = "qemu"\nmemory_mib = 2048\ndisks = ["disk.raw"]\n'
        '[publish.refs]\n"prod.hcl" = "reg.example:5000/me/plan:prod"\n',
    )
    config = load_config(tmp_path)
    assert config.vm.backend is Backend.QEMU
    assert config.vm.memory_mib == 2048
    assert config.vm.disks == [tmp_path / "disk.raw"]
    assert config.plan_ref(tmp_path / "plans/prod.hcl") == "reg.example:5000/me/plan:prod"


def test_parse_hooks_give_typed_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[vm]\narch = "arm64"\nmac = "52:54:00:AB:CD:EF"\naccel = "tcg"\n'
        '[build]\narches = ["amd64", "aarch64"]\n',
    )
    config = load_config(tmp_path)
    assert config.vm.arch is Arch.AARCH64 and config.vm_arch() is Arch.AARCH64
    assert config.vm.mac == "52:54:00:ab:cd:ef"
    assert config.vm.accel is Accel.TCG
    assert config.build.arches == [Arch.X86_64, Arch.AARCH64]
    assert Backend.AUTO.resolve("darwin") is Backend.VFKIT
    assert Backend.AUTO.resolve("linux") is Backend.QEMU
    assert Backend.VFKIT.resolve("linux") is Backend.VFKIT
    assert config.where == str(tmp_path / "cloudboot.toml")
    assert parse_config({}, tmp_path).where == "cloudboot.toml"


def test_config_found_from_a_subdirectory(tmp_path: Path) -> None:
    write(tmp_path, "[watch]\ndebounce_ms = 250\n")
    (tmp_path / "plans").mkdir()
    assert load_config(tmp_path / "plans").watch.debounce_ms == 250


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[vm]\nmemory_mib = "1G"\n', '[vm].memory_mib: expected an integer, got str "1G"'),
        ("[vm]\nmemry = 1\n", "[vm].memry: unknown key (did you mean 'memory_mib'?); known keys"),
        ("[vm]\nzzz = 1\n", "[vm].zzz: unknown key; known keys: backend"),
        ("[vms]\n", "[vms]: unknown section (did you mean 'vm'?)"),
        ('[vm]\nbackend = "kvm"\n', "[vm].backend: expected one of 'auto', 'qemu', 'vfkit'"),
        ('[vm]\ndisks = ["missing.raw"]\n', "[vm].disks[0]: file not found"),
        ('[vm]\narch = "sparc"\n', "[vm].arch: unknown architecture 'sparc'"),
        ('[vm]\ngui = "yes"\n', "[vm].gui: expected a boolean"),
        ("[vm]\nmemory_mib = 64\n", "[vm].memory_mib: must be at least 128, got 64"),
        ("[vm]\ncpus = 0\n", "[vm].cpus: must be at least 1, got 0"),
        ('[vm]\nmac = "auto"\n', "[vm].mac: expected a fixed MAC like 52:54:00:12:34:56"),
        ('[vm]\naccel = "hvf"\n', "[vm].accel: expected one of 'auto', 'kvm', 'tcg'"),
        ('[build]\narches = ["sparc"]\n', "[build].arches[0]: unknown architecture 'sparc'"),
        ("[build]\narches = [1]\n", "[build].arches[0]: expected one of"),
        ("[vm\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "cloudboot.toml"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[watch]\n\n[vm]  # mine\ncpus = 2\n  memory_mib = "1G"\n', ":5: [vm].memory_mib"),
        ('[vm]\n"cpus" = 0\n', ":2: [vm].cpus"),
        ("# a comment\n[vmm]\n", ":2: [vmm]: unknown section"),
        ("[registry]\n[vm]\ncpu = 1\n", ":3: [vm].cpu: unknown key"),
        ('[vm]\ndisks = ["missing.raw"]\n', ":2: [vm].disks[0]: file not found"),
        ("vm.cpus = 0\n", ": [vm].cpus"),  # a dotted key: no line rather than a wrong one
        ("vm = { cpus = 0 }\n", ": [vm].cpus"),
    ],
)
def test_a_bad_value_names_its_line(tmp_path: Path, text: str, where: str) -> None:
    """tomllib keeps no positions; the error still says where the editor has to jump."""
    write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'cloudboot.toml'}{where}")


def test_template_lists_every_section_and_parses_back(tmp_path: Path) -> None:
    import tomllib

    text = render_template()
    for section in ("[registry]", "[publish]", "[signing]", "[build]", "[vm]", "[watch]"):
        assert section in text
    # Uncommenting every default yields a valid config equal to the defaults.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    data = tomllib.loads(uncommented)
    data["vm"].pop("nvram"), data["vm"].pop("serial_log"), data["registry"].pop("ca_bundle")
    assert parse_config(data, tmp_path) == load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "arches"),
    [
        ('[vm]\narch = "aarch64"\n', ["x86_64", "aarch64"]),  # the VM's arch is added
        ('[build]\narches = ["aarch64"]\n[vm]\narch = "aarch64"\n', ["aarch64"]),
        ('[build]\narches = ["aarch64", "x86_64"]\n[vm]\narch = "x86_64"\n', ["aarch64", "x86_64"]),
    ],
)
def test_boot_media_always_carry_the_vm_arch(tmp_path: Path, text: str, arches: list[str]) -> None:
    (tmp_path / "cloudboot.toml").write_text(text)
    assert [a.value for a in load_config(tmp_path).media_arches()] == arches
