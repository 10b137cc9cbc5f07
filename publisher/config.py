"""The workspace config (``cloudboot.toml``): one declarative table of typed settings.

Each section is a frozen dataclass; each field declares its type, default and help once,
and that single declaration drives parsing, validation (with the key's path in every
error), ``cloudboot init``'s commented template and the JSON dump. Paths are resolved
against the workspace root so the rest of the code never sees a relative path.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError

CONFIG_NAME = "cloudboot.toml"


class ConfigError(CloudbootError):
    pass


def setting(default: Any, help: str, *, must_exist: bool = False) -> Any:
    """Declare one setting: its default, its help text, whether a path must exist."""
    meta = {"help": help, "must_exist": must_exist}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class Backend(enum.Enum):
    AUTO = "auto"
    QEMU = "qemu"
    VFKIT = "vfkit"


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


@dataclass(frozen=True)
class PublishSection:
    ref: str = setting(
        "{registry}/cloudboot/{name}:latest",
        "Ref template for plans/<name>.hcl; {registry} and {name} are filled in.",
    )
    refs: dict[str, str] = setting({}, "Explicit refs per plan file (relative to plans/).")


@dataclass(frozen=True)
class SigningSection:
    key: Path = setting(Path("cosign.key"), "cosign private key (encrypted or PKCS#8 PEM).")
    public_key: Path = setting(Path("cosign.pub"), "cosign public key embedded in boot.iso.")


@dataclass(frozen=True)
class BuildSection:
    recipe: Path = setting(Path("kernel/recipe.toml"), "The boot-image recipe.")
    iso: Path = setting(Path("build/boot.iso"), "Where `cloudboot build` writes boot.iso.")
    cache_disk: Path = setting(Path("build/menu-cache.raw"), "The writable cache disk.")
    cache_disk_size_mib: int = setting(256, "Size of a new cache disk in MiB.")
    arches: list[str] = setting(["x86_64"], "Architectures baked into boot.iso.")


@dataclass(frozen=True)
class VmSection:
    backend: Backend = setting(Backend.AUTO, "auto (vfkit on macOS, qemu elsewhere), qemu, vfkit.")
    arch: str = setting("", "Guest architecture; empty means the host's.")
    cpus: int = setting(2, "Virtual CPUs.")
    memory_mib: int = setting(1024, "Guest memory in MiB.")
    disks: list[Path] = setting([], "Extra disks (raw), e.g. the chained distro.", must_exist=True)
    mac: str = setting("52:54:00:c1:0b:01", "Fixed MAC of the NIC (vfkit rejects mac=auto).")
    gui: bool = setting(False, "Show a graphical console.")
    state_dir: Path = setting(Path(".cloudboot/vm"), "NVRAM store, serial log, sockets, pidfile.")
    nvram: Path | None = setting(None, "NVRAM variable store; default <state_dir>/nvram.fd.")
    serial_log: Path | None = setting(None, "Serial log; default <state_dir>/serial.log.")
    accel: str = setting(
        "auto", "QEMU accelerator: auto (KVM when /dev/kvm works, else TCG), kvm or tcg."
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
    def plans_dir(self) -> Path:
        return self.root / "plans"

    @property
    def kernel_dir(self) -> Path:
        return self.root / "kernel"

    def plan_ref(self, plan_file: Path) -> str:
        """The OCI ref a plan file is published to."""
        rel = plan_file.resolve().relative_to(self.plans_dir.resolve()).as_posix()
        if rel in self.publish.refs:
            return self.publish.refs[rel]
        name = rel.removesuffix(".hcl").replace("/", "-")
        return self.publish.ref.format(registry=self.registry.url, name=name)

    def vm_backend(self) -> Backend:
        """``[vm].backend`` resolved for this host (see ``vm_backend_for``)."""
        return self.vm_backend_for(self.vm.backend, sys.platform)

    @staticmethod
    def vm_backend_for(backend: Backend, platform: str) -> Backend:
        """auto is vfkit on macOS (Virtualization.framework), QEMU everywhere else."""
        if backend is not Backend.AUTO:
            return backend
        return Backend.VFKIT if platform == "darwin" else Backend.QEMU

    def vm_arch(self) -> Arch:
        return Arch.parse(self.vm.arch) if self.vm.arch else Arch.host()

    def media_arches(self) -> list[Arch]:
        """``[build].arches``, plus the VM's arch if missing: the VM must boot our boot.iso."""
        arches = [Arch.parse(a) for a in self.build.arches]
        return arches if self.vm_arch() in arches else [*arches, self.vm_arch()]

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

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


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", Path: "a path (string)"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return (
            "a list of "
            + _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
            + "s"
        )
    if origin is dict:
        return "a table of strings"
    return str(tp)


def _convert(value: Any, tp: Any, key: str, root: Path, where: str) -> Any:
    """Check ``value`` against the declared type and convert it (paths resolved)."""

    def fail() -> ConfigError:
        shown = repr(value) if not isinstance(value, str) else f'"{value}"'
        return ConfigError(
            f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {shown}", where=where
        )

    if isinstance(tp, types.UnionType):  # X | None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value in (None, "") else _convert(value, inner, key, root, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}", where=where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise fail()
        path = Path(value).expanduser()
        return path if path.is_absolute() else root / path
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise fail() from None
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", root, where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise fail()
        return dict(value)
    raise TypeError(f"unsupported setting type {tp!r}")  # a bug in SECTIONS, not user input


def _resolve_default(value: Any, tp: Any, root: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else root / value
    return value


def _load_section(cls: type, raw: Mapping[str, Any], name: str, root: Path, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"[{name}].{unknown[0]}: unknown key; known keys: {', '.join(fields)}", where=where
        )
    values: dict[str, Any] = {}
    for fname, f in fields.items():
        tp = hints[fname]
        if fname in raw:
            value = _convert(raw[fname], tp, f"[{name}].{fname}", root, where)
            if f.metadata.get("must_exist"):
                paths = value if isinstance(value, list) else [value]
                for i, p in enumerate(paths):
                    if p is not None and not p.exists():
                        idx = f"[{i}]" if isinstance(value, list) else ""
                        raise ConfigError(
                            f"[{name}].{fname}{idx}: file not found: {p}", where=where
                        )
        else:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            value = _resolve_default(default, tp, root)
        values[fname] = value
    return cls(**values)


def parse_config(data: Mapping[str, Any], root: Path, source: Path | None = None) -> Config:
    where = str(source) if source else CONFIG_NAME
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"[{unknown[0]}]: unknown section; known sections: {', '.join(SECTIONS)}", where=where
        )
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}]: expected a table, got {type(raw).__name__}", where=where)
        sections[name] = _load_section(cls, raw, name, root, where)
    config = Config(root=root, source=source, **sections)
    vm: VmSection = sections["vm"]
    if vm.arch:
        try:
            Arch.parse(vm.arch)
        except ValueError as exc:
            raise ConfigError(f"[vm].arch: {exc}", where=where) from None
    for i, arch in enumerate(sections["build"].arches):
        try:
            Arch.parse(arch)
        except ValueError as exc:
            raise ConfigError(f"[build].arches[{i}]: {exc}", where=where) from None
    return config


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
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", where=str(path)) from None
    return parse_config(data, root, path)


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
            lines.append(f"# {f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if value is None:
        return '""'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    return str(value)
