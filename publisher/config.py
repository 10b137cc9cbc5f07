"""The workspace config (``cloudboot.toml``): one declarative table of typed settings.

Each section is a frozen dataclass; each field declares its type, default and help once,
and that single declaration drives parsing, validation (with the key's path in every
error), ``cloudboot init``'s commented template and the JSON dump. Paths are resolved
against the workspace root so the rest of the code never sees a relative path. The
generic machinery (``setting``, conversion, parse hooks) is ``publisher.settings``.

Values are checked here and only here: enums (backend, accel), ranges (cpus, memory), the
MAC and the architectures are parsed by the setting's ``parse`` hook, so a ``Config``
holds only valid, typed values and its users (``watcher.vm.spec`` ...) never re-check.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from publisher.settings import (
    SettingError,
    TomlSource,
    at_least,
    convert,
    did_you_mean,
    mac_address,
    plain,
    setting,
    toml_value,
)

CONFIG_NAME = "cloudboot.toml"
#: Plan files are plans/**/*.hcl; the suffix is dropped from the default ref name.
PLAN_SUFFIX = ".hcl"


class ConfigError(CloudbootError):
    pass


class Backend(enum.Enum):
    """The VM backend; ``auto`` is resolved per host by :meth:`resolve`."""

    AUTO = "auto"
    QEMU = "qemu"
    VFKIT = "vfkit"

    @classmethod
    def for_host(cls, platform: str = sys.platform) -> Backend:
        """vfkit on macOS (Virtualization.framework), QEMU everywhere else."""
        return cls.VFKIT if platform == "darwin" else cls.QEMU

    def resolve(self, platform: str = sys.platform) -> Backend:
        return Backend.for_host(platform) if self is Backend.AUTO else self


class Accel(enum.Enum):
    """QEMU's accelerator; ``auto`` is KVM when /dev/kvm works (decided at launch)."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Loop(enum.Enum):
    """How a reload reaches the target (README.md "The loop")."""

    GUEST = "guest"  # two firmware passes: agent, reboot, Boot0001 (Path C; vfkit's only loop)
    KEXEC = "kexec"  # one firmware pass: the agent kexecs the target (QEMU only)
    HOST = "host"  # the host stages into the stopped VM's images: one boot (QEMU only)


class RegistryServer(enum.Enum):
    """Which server ``cloudboot up`` embeds (publisher/localregistry.py)."""

    AUTO = "auto"
    DOCKER_REGISTRY = "docker-registry"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class RegistrySection:
    url: str = setting("127.0.0.1:5000", "Registry host[:port] that plan refs default to.")
    insecure: bool = setting(False, "Use plain HTTP even for non-loopback hosts.")
    ca_bundle: Path | None = setting(None, "PEM CA bundle for a private registry.", must_exist=True)
    embedded: bool = setting(
        True, "Start a local docker-registry on `url` for `cloudboot up` (loopback only)."
    )
    server: RegistryServer = setting(
        RegistryServer.AUTO,
        "Embedded registry: auto (docker-registry when installed, else builtin), "
        "docker-registry, or builtin (cloudboot's own, pure Python; what a Mac gets).",
    )
    storage: Path = setting(Path(".cloudboot/registry"), "Storage of the embedded registry.")
    retry_seconds: int = setting(
        60, "Bound on retrying one registry operation (connection errors, 5xx, 408, 429)."
    )


def registry_host(value: str) -> str:
    """A registry as ``host[:port]``: no scheme, no path (the repository comes from the ref)."""
    if not value or "/" in value or "@" in value or value != value.strip():
        raise ValueError(f"expected a registry host[:port] like mirror.example:5000, got {value!r}")
    return value


@dataclass(frozen=True)
class PublishSection:
    ref: str = setting(
        "{registry}/cloudboot/{name}:latest",
        "Ref template for plans/<name>.hcl; {registry} and {name} are filled in.",
    )
    refs: dict[str, str] = setting({}, "Explicit refs per plan file (relative to plans/).")
    upstream: bool = setting(
        False,
        "Refuse plans using forms upstream's guest rejects (docs/plan-language.md §5), "
        "for fleets that also boot upstream's guest; `plan validate` warns about them anyway.",
    )
    mirrors: list[str] = setting(
        [],
        "More registries (host[:port]) every `cloudboot publish` also goes to, same"
        " repository and tag: all of them move their tags or none does.",
        parse=registry_host,
    )
    canary: bool = setting(
        False,
        "`cloudboot publish` boots each changed plan from a staging tag in QEMU first and"
        " moves its production tag only when the target came up (as --canary).",
    )
    canary_parallel: int = setting(2, "Canary VMs booting at once.", parse=at_least(1))
    canary_deadline_seconds: int = setting(
        1800, "Deadline for all canaries of one publish: a plan not proven by then is held.",
        parse=at_least(1),
    )  # fmt: skip
    canary_boot_seconds: int = setting(
        600, "How long one canary boot may take to come up before it counts as failed.",
        parse=at_least(1),
    )  # fmt: skip
    canary_success: dict[str, str] = setting(
        {},
        'Per plan file (relative to plans/; "*" for all): a regex on the serial console'
        " that means up. Default: the staged kernel's `Run /... as init process` after the"
        " firmware's `BdsDxe: starting Boot0001`.",
    )
    canary_failure: dict[str, str] = setting(
        {},
        'Per plan file ("*" for all): one more regex that means failed, on top of a'
        " kernel panic, the agent's FATAL:, an emergency shell and a missing root.",
    )


@dataclass(frozen=True)
class SigningSection:
    key: Path = setting(Path("cosign.key"), "cosign private key (encrypted or PKCS#8 PEM).")
    public_key: Path = setting(Path("cosign.pub"), "cosign public key embedded in boot.iso.")


#: A new cache disk's size. Above 260 MiB its FAT32 gets 4 KiB clusters instead of 512 B
#: ones: the guest's staging write of a 15 MB kernel then allocates 8x fewer clusters
#: (under TCG the write step went from 1.3 s to 0.65-0.85 s with 2 KiB clusters; the
#: image is sparse, so the size costs no host disk until used).
CACHE_DISK_SIZE_MIB = 512


@dataclass(frozen=True)
class BuildSection:
    recipe: Path = setting(Path("kernel/recipe.toml"), "The boot-image recipe.")
    iso: Path = setting(Path("build/boot.iso"), "Where `cloudboot build` writes boot.iso.")
    cache_disk: Path = setting(Path("build/menu-cache.raw"), "The writable cache disk.")
    cache_disk_size_mib: int = setting(CACHE_DISK_SIZE_MIB, "Size of a new cache disk in MiB.")
    arches: list[Arch] = setting(
        [Arch.X86_64], "Architectures baked into boot.iso.", parse=Arch.parse
    )


@dataclass(frozen=True)
class VmSection:
    backend: Backend = setting(Backend.AUTO, "auto (vfkit on macOS, qemu elsewhere), qemu, vfkit.")
    arch: Arch | None = setting(
        None, "Guest architecture; empty means the host's.", parse=Arch.parse
    )
    cpus: int = setting(2, "Virtual CPUs.", parse=at_least(1))
    memory_mib: int = setting(1024, "Guest memory in MiB.", parse=at_least(128))
    disks: list[Path] = setting([], "Extra disks (raw), e.g. the chained distro.", must_exist=True)
    mac: str = setting(
        "52:54:00:c1:0b:01", "Fixed MAC of the NIC (vfkit rejects mac=auto).", parse=mac_address
    )
    gui: bool = setting(False, "Show a graphical console.")
    state_dir: Path = setting(Path(".cloudboot/vm"), "NVRAM store, serial log, sockets, pidfile.")
    nvram: Path | None = setting(None, "NVRAM variable store; default <state_dir>/nvram.fd.")
    serial_log: Path | None = setting(None, "Serial log; default <state_dir>/serial.log.")
    accel: Accel = setting(
        Accel.AUTO, "QEMU accelerator: auto (KVM when /dev/kvm works, else TCG), kvm or tcg."
    )
    stop_timeout_ms: int = setting(
        1000,
        "How long a guest gets to power off on request before a hard stop when the watcher "
        "restarts it (everything is re-staged anyway); `vm down --timeout` sets its own.",
    )


@dataclass(frozen=True)
class WatchSection:
    debounce_ms: int = setting(100, "Quiet time that closes a burst of file events.")
    ignore: list[str] = setting([], "Extra ignore patterns (as in .cloudbootignore).")
    prepare_ahead: bool = setting(
        True,
        "Upload and sign a plan edit while the debounce window is still open, so the run "
        "only moves the tag. Off: nothing is sent before the window closes (no untagged "
        "manifests left behind by intermediate saves).",
    )
    loop: Loop = setting(
        Loop.GUEST,
        "guest (two passes, Path C, the default), kexec (the agent kexecs the target: one "
        "firmware pass; boot.iso gets cloudboot.exit=kexec,reboot) or host (the host stages "
        "the default target into the stopped VM's cache disk and vars file: one boot). "
        "kexec and host are Linux/QEMU development conveniences.",
    )


@dataclass(frozen=True)
class Config:
    """The whole workspace config; ``root`` is the directory holding cloudboot.toml."""

    root: Path
    source: Path | None
    registry: RegistrySection
    publish: PublishSection
    signing: SigningSection
    build: BuildSection
    vm: VmSection
    watch: WatchSection

    @property
    def where(self) -> str:
        """How an error about a setting names the config: its file (or the default name)."""
        return _where(self.source)

    @property
    def plans_dir(self) -> Path:
        return self.root / "plans"

    @property
    def kernel_dir(self) -> Path:
        return self.root / "kernel"

    def plan_ref(self, plan_file: Path) -> str:
        """The OCI ref a plan file is published to."""
        return self.ref_for(plan_file.resolve().relative_to(self.plans_dir.resolve()).as_posix())

    def ref_for(self, rel: str) -> str:
        """The OCI ref of the plan at ``rel`` (POSIX, relative to plans/, symlinks resolved)."""
        if rel in self.publish.refs:
            return self.publish.refs[rel]
        name = rel.removesuffix(PLAN_SUFFIX).replace("/", "-")
        return self.publish.ref.format(registry=self.registry.url, name=name)

    def vm_arch(self) -> Arch:
        return self.vm.arch or Arch.host()

    def media_arches(self) -> list[Arch]:
        """``[build].arches``, plus the VM's arch if missing: the VM must boot our boot.iso."""
        arches = list(self.build.arches)
        return arches if self.vm_arch() in arches else [*arches, self.vm_arch()]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"root": str(self.root)}
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(cls)}
        return out


SECTIONS: dict[str, type] = {
    "registry": RegistrySection,
    "publish": PublishSection,
    "signing": SigningSection,
    "build": BuildSection,
    "vm": VmSection,
    "watch": WatchSection,
}


def _resolve_default(value: Any, tp: Any, root: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else root / value
    return value


def _load_section(cls: type, raw: Mapping[str, Any], name: str, root: Path, at: TomlSource) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        hint = did_you_mean(unknown[0], fields)
        raise ConfigError(
            f"[{name}].{unknown[0]}: unknown key{hint}; known keys: {', '.join(fields)}",
            where=at.where(name, unknown[0]),
        )
    values: dict[str, Any] = {}
    for fname, f in fields.items():
        tp = hints[fname]
        if fname in raw:
            try:
                value = convert(raw[fname], tp, f"[{name}].{fname}", root, f.metadata["parse"])
            except SettingError as exc:
                raise ConfigError(str(exc), where=at.where(name, fname)) from None
            if f.metadata.get("must_exist"):
                paths = value if isinstance(value, list) else [value]
                for i, p in enumerate(paths):
                    if p is not None and not p.exists():
                        idx = f"[{i}]" if isinstance(value, list) else ""
                        missing = f"[{name}].{fname}{idx}: file not found: {p}"
                        raise ConfigError(missing, where=at.where(name, fname))
        else:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            value = _resolve_default(default, tp, root)
        values[fname] = value
    return cls(**values)


def _where(source: Path | None) -> str:
    return str(source) if source else CONFIG_NAME


def parse_config(
    data: Mapping[str, Any], root: Path, source: Path | None = None, text: str = ""
) -> Config:
    """``text``: the file's own text, only to name the line of a bad table or key."""
    at = TomlSource(_where(source), text)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        hint = did_you_mean(unknown[0], SECTIONS)
        raise ConfigError(
            f"[{unknown[0]}]: unknown section{hint}; known sections: {', '.join(SECTIONS)}",
            where=at.where(unknown[0]),
        )
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            not_table = f"[{name}]: expected a table, got {type(raw).__name__}"
            raise ConfigError(not_table, where=at.where(name))
        sections[name] = _load_section(cls, raw, name, root, at)
    return Config(root=root, source=source, **sections)


def find_workspace(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding cloudboot.toml, else ``start``."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return start


def load_config(workspace: Path | None = None) -> Config:
    """Load ``cloudboot.toml`` from the workspace (found upwards from cwd by default).

    A workspace without a config file gets every default, so the CLI works in a bare
    checkout of ``plans/`` too.
    """
    root = find_workspace(workspace or Path.cwd())
    path = root / CONFIG_NAME
    if not path.is_file():
        return parse_config({}, root)
    text = path.read_text()
    data = TomlSource(str(path), text).loads(ConfigError)
    return parse_config(data, root, path, text)


def render_template() -> str:
    """A fully commented cloudboot.toml listing every setting with its default."""
    lines = ["# cloudboot workspace config. Every key is optional; defaults shown.", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"# {f.name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)
