"""The boot-image recipe (``kernel/recipe.toml``) as typed, validated objects.

The recipe says where every input of boot.iso comes from, per architecture: kernel
(a Debian package, a local file, an OCI kernel artifact, or an own-kernel build from a
source tree), systemd stub and busybox (a Debian package or a local file), the kernel
modules to put in the initramfs, the baked command line, the cosign public key, and
extra initramfs content. Paths are resolved against the recipe's directory, and
every error names the recipe file and the key, so a typo is found before any download.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.oci import RefError, parse_ref
from guest.contract.pubkey import load_public_key
from publisher.media.cpio import Compression
from publisher.settings import TomlSource

if TYPE_CHECKING:
    from publisher.config import Config

DEFAULT_CMDLINE = "cloudboot.exit=reboot cloudboot.plan={plan} no_timer_check console={console}"
#: ``{plan}`` without a workspace: the default embedded registry, host = the guest's gateway.
DEFAULT_PLAN_REF = "oci://{{.Gateway}}:5000/cloudboot/default:latest"
#: vfkit's ``virtio-serial`` is a virtio console, not a UART (docs/wire-formats.md §6).
VIRTIO_CONSOLE = "hvc0"
#: In load order; the guest starts DHCP once a NIC appears, so the NIC driver comes early.
DEFAULT_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_rng",
                   "virtio_console", "vfat", "nls_cp437", "nls_ascii", "efivarfs")  # fmt: skip
INIT_MODES = ("busybox-marker", "guest-agent")
_ARCH_DEFAULTS = {
    Arch.X86_64: {"kernel": "linux-image-cloud-amd64"},
    Arch.AARCH64: {"kernel": "linux-image-cloud-arm64"},
}


class RecipeError(CloudbootError):
    pass


class SourceKind(enum.Enum):
    DEB = "deb"
    FILE = "file"
    OCI = "oci"  # kernel only: a cloud-boot kernel artifact (docs/wire-formats.md §2.3)
    BUILD = "build"  # kernel only: `cloudboot kernel build` output for a source tree


#: Extra keys a source table may carry besides its kind, per kind.
SOURCE_OPTIONS = {SourceKind.OCI: {"verify"}, SourceKind.BUILD: {"config"}}
#: Kinds that only make sense for the kernel (a stub or busybox comes from a deb or file).
KERNEL_ONLY_KINDS = (SourceKind.OCI, SourceKind.BUILD)


@dataclass(frozen=True)
class Source:
    """Where one input comes from; ``key`` is its recipe key, for error messages.

    ``verify`` (OCI only, on unless ``verify = false``): check the artifact's cosign
    signature with the recipe's ``signing.cosign_public_key`` before using it
    (docs/trust-model.md: every byte that boots is bound to the key). ``config`` (build
    only): the kernel .config the tree is built with.
    """

    kind: SourceKind
    value: str
    key: str
    verify: bool = True
    config: Path | None = None

    @property
    def path(self) -> Path:
        return Path(self.value)


@dataclass(frozen=True)
class ArchRecipe:
    arch: Arch
    kernel: Source
    stub: Source
    busybox: Source
    console: str
    #: Kernel release (``uname -r``); when empty it is read from the Debian package, the
    #: OCI artifact (config, annotations, modules layer, bzImage header) or the build.
    uname: str = ""
    #: A ``lib/modules/<uname>`` directory: required for a local kernel file, and it
    #: overrides the modules an OCI artifact or an own-kernel build brings.
    modules_dir: Path | None = None


@dataclass(frozen=True)
class FileSpec:
    """One extra initramfs file: ``src`` on the host, ``dest`` inside, octal ``mode``."""

    src: Path
    dest: str
    mode: int = 0o644


@dataclass(frozen=True)
class InitramfsRecipe:
    init: str = "busybox-marker"
    compression: Compression = Compression.GZIP
    modules: tuple[str, ...] = DEFAULT_MODULES
    files: tuple[FileSpec, ...] = ()
    trees: tuple[FileSpec, ...] = ()
    #: Packed but loaded only when the guest needs them (xfs, btrfs disk targets).
    on_demand_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    path: Path
    digest: str  # sha256 of the recipe text: part of the build fingerprint
    cmdline: str
    cosign_public_key: Path | None
    secureboot_key: Path | None
    secureboot_cert: Path | None
    initramfs: InitramfsRecipe
    arches: dict[Arch, ArchRecipe] = field(default_factory=dict)
    #: ``[base] oci``: a signed base artifact (REF@sha256:...) every deb source, the guest
    #: runtime and the demo disk come from instead of apt (publisher/media/base.py).
    base: str | None = None
    #: What ``{plan}`` becomes (``configured`` derives it from the workspace).
    plan_ref: str = DEFAULT_PLAN_REF
    #: The VM backend's console for every arch (vfkit: hvc0); None = each arch's ``console``.
    console: str | None = None
    #: ``[registry] ca``: PEM certificates the guest trusts for HTTPS registries (a
    #: private CA), baked into the initramfs (guest.agent.registryconf.REGISTRY_CA).
    registry_ca: Path | None = None

    def for_arch(self, arch: Arch) -> ArchRecipe:
        try:
            return self.arches[arch]
        except KeyError:
            raise RecipeError(
                f"no [arch.{arch.value}] section; recipe has: "
                + ", ".join(a.value for a in self.arches),
                where=str(self.path),
            ) from None

    def cmdline_for(self, arch: Arch, override: str | None = None) -> str:
        """The baked command line with ``{console}`` and ``{plan}`` filled in for ``arch``."""
        text = self.cmdline if override is None else override
        console = self.console or self.for_arch(arch).console
        return text.replace("{console}", console).replace("{plan}", self.plan_ref)


def parse_recipe(text: str, path: Path) -> Recipe:
    """Parse recipe text; ``path`` is where it lives (relative paths resolve against it)."""
    from publisher.media.recipereader import Reader  # it builds this module's types

    r = Reader(path, text)
    data = r.toml.loads(RecipeError)
    r.known(data, "", {"cmdline", "signing", "initramfs", "arch", "base", "registry"})
    registry_ca = r.opt_path(r.table(data, "registry", {"ca"}), "registry.ca")
    base = r.string(r.table(data, "base", {"oci"}), "base.oci", "") or None
    if base is not None:
        try:
            pinned = parse_ref(base).digest
        except RefError as exc:
            raise r.fail("base.oci", exc.message) from None
        if not pinned:
            raise r.fail("base.oci", f"{base} is not pinned: use the REF@sha256:... that "
                                     "`cloudboot push base` prints")  # fmt: skip
    cmdline = r.string(data, "cmdline", DEFAULT_CMDLINE)
    signing = r.table(data, "signing", {"cosign_public_key", "secureboot_key", "secureboot_cert"})
    sb_key = r.opt_path(signing, "signing.secureboot_key")
    sb_cert = r.opt_path(signing, "signing.secureboot_cert")
    if (sb_key is None) != (sb_cert is None):
        raise r.fail("signing", "secureboot_key and secureboot_cert go together")
    ird = r.table(
        data, "initramfs", {"init", "compression", "modules", "on_demand_modules", "files", "trees"}
    )
    init = r.string(ird, "initramfs.init", "busybox-marker")
    if init not in INIT_MODES:
        raise r.fail("initramfs.init", f"expected one of {', '.join(INIT_MODES)}, got {init!r}")
    try:
        compression = Compression(r.string(ird, "initramfs.compression", "gzip"))
    except ValueError:
        raise r.fail("initramfs.compression", "expected none, gzip, zstd or lz4") from None
    modules = ird.get("modules", list(DEFAULT_MODULES))
    on_demand = ird.get("on_demand_modules", [])
    for key, names in (("modules", modules), ("on_demand_modules", on_demand)):
        if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
            raise r.fail(f"initramfs.{key}", "expected an array of module names")
    initramfs = InitramfsRecipe(
        init, compression, tuple(modules), r.file_specs(ird, "initramfs.files"),
        r.file_specs(ird, "initramfs.trees"), tuple(on_demand),
    )  # fmt: skip
    arch_tables = data.get("arch", {})
    if not isinstance(arch_tables, dict) or not arch_tables:
        raise r.fail("arch", "expected at least one [arch.x86_64] or [arch.aarch64] table")
    arches = {}
    for name in arch_tables:
        try:
            arch = Arch.parse(name)
        except ValueError as exc:
            raise r.fail(f"arch.{name}", str(exc)) from None
        key = f"arch.{name}"
        table = r.table(arch_tables, key, {"kernel", "stub", "busybox", "console", "uname",
                                           "modules_dir"})  # fmt: skip
        modules_dir = r.opt_path(table, f"{key}.modules_dir")
        kernel = r.source(table, f"{key}.kernel", _ARCH_DEFAULTS[arch]["kernel"], kernel=True)
        if kernel.kind is SourceKind.BUILD and kernel.config is None:
            default_config = r.base / f"cloud-{arch.oci}.config"
            if not default_config.is_file():
                raise r.fail(
                    f"{key}.kernel.config",
                    f"file not found: {default_config} (default of a build source)",
                )
            kernel = replace(kernel, config=default_config.resolve())
        arches[arch] = ArchRecipe(
            arch=arch,
            kernel=kernel,
            stub=r.source(table, f"{key}.stub", "systemd-boot-efi"),
            busybox=r.source(table, f"{key}.busybox", "busybox-static"),
            console=r.string(table, f"{key}.console", arch.serial_console),
            uname=r.string(table, f"{key}.uname", ""),
            modules_dir=modules_dir,
        )
        if arches[arch].kernel.kind is SourceKind.FILE and initramfs.modules and not modules_dir:
            raise r.fail(f"{key}.modules_dir", "a kernel file source needs modules_dir "
                                               "(or set initramfs.modules = [])")  # fmt: skip
    return Recipe(
        path=path,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        cmdline=cmdline,
        cosign_public_key=r.opt_path(signing, "signing.cosign_public_key", must_exist=False),
        secureboot_key=sb_key,
        secureboot_cert=sb_cert,
        initramfs=initramfs,
        arches=arches,
        base=base,
        registry_ca=registry_ca,
    )


def check_public_key(recipe: Recipe) -> None:
    """Fail closed: a configured key that is missing or unreadable stops the build.

    An image built without it would boot unsigned plans (docs/trust-model.md), so a
    typo in the path must not quietly produce one.
    """
    path = recipe.cosign_public_key
    if path is None:
        return
    key = "signing.cosign_public_key"
    try:
        load_public_key(path.read_bytes())
        return
    except OSError as exc:
        why = (f"{exc.strerror}; create it with `cloudboot key generate` or remove the"
               " setting (an image without a key verifies nothing)")  # fmt: skip
    except CloudbootError as exc:
        why = f"not a public key cosign writes ({exc.message})"
    try:
        where = TomlSource(str(recipe.path), recipe.path.read_text()).where_key(key)
    except OSError:
        where = str(recipe.path)
    raise RecipeError(f"{key} = {path}: {why}", where=where)


def load_recipe(path: Path) -> Recipe:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror}", where=str(path)) from None
    return parse_recipe(text, path.resolve())


#: The host as every guest sees it (its DHCP gateway), rendered by the guest agent.
GATEWAY_HOST = "{{.Gateway}}"


def configured(recipe: Recipe, config: Config, plan: str | None = None) -> Recipe:
    """The recipe as this workspace builds it: ``{plan}`` is the published default plan
    (or ``plan``: a canary's staging ref) as the guest will see it, ``{console}`` the VM
    backend's console (vfkit: hvc0).

    A registry on the host's loopback (the embedded one) is named ``{{.Gateway}}``: the
    guest substitutes its DHCP gateway, which is the host under both backends (QEMU user
    networking's 10.0.2.2; vfkit's vmnet bridge address, where `cloudboot up` forwards to
    the loopback registry while the VM runs). README.md "macOS" says why. The kexec loop
    (``[watch].loop``) asks the agent to leave by kexec.
    """
    from publisher.config import Backend, ConfigError, Loop

    vfkit = config.vm.backend.resolve() is Backend.VFKIT
    cmdline = recipe.cmdline
    if vfkit and config.watch.loop is not Loop.GUEST:
        raise ConfigError(
            f'[watch].loop = "{config.watch.loop.value}" needs the QEMU backend; use "guest"',
            where=str(config.root / "cloudboot.toml"),
        )
    if config.watch.loop is Loop.KEXEC:
        kept = [w for w in cmdline.split() if not w.startswith("cloudboot.exit=")]
        cmdline = " ".join([*kept, "cloudboot.exit=kexec,reboot"])
    ref = parse_ref(plan or config.plan_ref(config.plans_dir / "default.hcl"))
    if ref.insecure_default:  # loopback: the guest's gateway is the host
        port = ref.registry.rpartition(":")[2] if not ref.registry.endswith("]") else ""
        host = GATEWAY_HOST + (f":{port}" if port.isdigit() else "")
        ref = replace(ref, registry=host)
    console = VIRTIO_CONSOLE if vfkit else None
    return replace(recipe, cmdline=cmdline, plan_ref=f"oci://{ref}", console=console)
