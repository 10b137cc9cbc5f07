"""The plan's typed objects: declarations as written, and targets as evaluated for one arch.

A :class:`Plan` is what the text says (expressions not yet evaluated, with positions); it
is arch-independent, so the guest parses once. :func:`guest.contract.plan.evaluate` turns it into
an :class:`EvaluatedPlan` for one arch, given what the guest knows (metadata, LLDP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.syntax import Attribute

#: Filesystems a disk target may name (``fs``); ext4 when absent.
DISK_FILESYSTEMS = ("ext4", "xfs", "btrfs", "zfs")
#: Device spellings a disk target may use (besides a ZFS dataset path with fs = "zfs").
DEVICE_PREFIXES = ("/dev/", "LABEL=", "UUID=", "PARTLABEL=", "PARTUUID=")
#: The plan attribute names of the disk source, in the order upstream documents them.
DISK_KEYS = ("device", "fs", "kernel", "initrd", "dataset", "luks-passphrase")
#: OCI source attributes, in merge order (later wins per role); ``modpack`` = ``modules``.
OCI_KEYS = ("index", "kernel", "initrd", "modules")
#: Upstream's header when a menu block gives no prompt.
DEFAULT_MENU_PROMPT = "Select a boot target:"
#: How many plans a subplan chain may hold, the root included (as upstream: the root plus
#: 7 subplans); the guest enforces it while following refs.
MAX_SUBPLAN_DEPTH = 8


# -- declarations (as written) -----------------------------------------------------------


@dataclass(frozen=True)
class DiskDecl:
    """A ``disk { ... }`` block or ``disk = { ... }`` attribute: its fields and position."""

    fields: Mapping[str, Attribute]
    where: Location


@dataclass(frozen=True)
class TargetDecl:
    """One ``target "name" { ... }`` block before evaluation."""

    name: str
    attributes: Mapping[str, Attribute]
    disk: DiskDecl | None
    where: Location


@dataclass(frozen=True)
class MenuDecl:
    """The plan's menu {} block: its attributes, evaluated later."""

    attributes: Mapping[str, Attribute]
    where: Location


@dataclass(frozen=True)
class Plan:
    """A parsed plan: top-level declarations with their positions (see module docstring)."""

    source: str
    default_target: Attribute | None
    locals: Mapping[str, Attribute]
    menu: MenuDecl | None
    dns: Attribute | None
    targets: tuple[TargetDecl, ...]

    def expressions(self) -> list[tuple[ex.Expr, str]]:
        """Every expression with the context it is evaluated in (for static checks)."""
        out: list[tuple[ex.Expr, str]] = []
        for attr in (self.default_target, self.dns):
            if attr is not None:
                out.append((attr.value, "top"))
        out += [(a.value, "locals") for a in self.locals.values()]
        if self.menu is not None:
            out += [(a.value, "top") for a in self.menu.attributes.values()]
        for target in self.targets:
            for name, attr in target.attributes.items():
                out.append(
                    (attr.value, "target-scalar" if name in ("arch", "version") else "target")
                )
            if target.disk is not None:
                out += [(a.value, "target") for a in target.disk.fields.values()]
        return out


# -- evaluated ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Lldp:
    """LLDP neighbour facts; the host knows none (available false, every field empty)."""

    available: bool = False
    chassis_id: str = ""
    port_id: str = ""
    system_name: str = ""
    system_desc: str = ""
    port_desc: str = ""
    mgmt_addr: str = ""

    def as_value(self) -> dict[str, ex.Value]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Menu:
    """The interactive chooser; ``timeout_s`` None means wait forever."""

    timeout_s: float | None
    prompt: str = DEFAULT_MENU_PROMPT


@dataclass(frozen=True)
class OciSource:
    """Refs merged in the order index, kernel, initrd, modules (later wins per role)."""

    index: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    modules: str | None = None

    kind = "oci"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, **{k: getattr(self, k) for k in OCI_KEYS}}


@dataclass(frozen=True)
class DiskSource:
    """Boot a kernel that lives on a local disk; the passphrase never appears in repr/JSON."""

    device: str
    fs: str = "ext4"
    kernel: str | None = None
    initrd: str | None = None
    dataset: str | None = None
    luks_passphrase: str | None = field(default=None, repr=False)

    kind = "disk"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "device": self.device,
            "fs": self.fs,
            "kernel": self.kernel,
            "initrd": self.initrd,
            "dataset": self.dataset,
            "luks_passphrase": None if self.luks_passphrase is None else "<redacted>",
        }


@dataclass(frozen=True)
class SubplanSource:
    """Chain to another plan by OCI ref (the guest follows it, at most MAX_SUBPLAN_DEPTH)."""

    ref: str

    kind = "subplan"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "ref": self.ref}


Source = OciSource | DiskSource | SubplanSource


@dataclass(frozen=True)
class Target:
    """One evaluated target; ``arch`` "" means any arch; ``where`` is its block's position."""

    name: str
    label: str
    arch: str
    version: str
    cmdline: str
    source: Source
    where: Location

    def eligible_on(self, arch: str) -> bool:
        return self.arch in ("", arch)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "arch": self.arch,
            "version": self.version,
            "cmdline": self.cmdline,
            "source": self.source.to_json(),
            "where": str(self.where),
        }


@dataclass(frozen=True)
class EvaluatedPlan:
    """A plan evaluated for one arch: every target (all arches), as upstream decodes it."""

    source: str
    arch: str
    default_target: str
    menu: Menu | None
    dns: tuple[str, ...]
    targets: tuple[Target, ...]
    #: Where default_target is set (its value), for errors about the default choice.
    default_where: Location | None = None

    def eligible_targets(self) -> list[Target]:
        """Targets this arch can boot, in plan order (what a menu lists)."""
        return [t for t in self.targets if t.eligible_on(self.arch)]

    def to_json(self) -> dict[str, object]:
        return {
            "plan": self.source,
            "arch": self.arch,
            "default_target": self.default_target,
            "menu": None
            if self.menu is None
            else {"timeout_s": self.menu.timeout_s, "prompt": self.menu.prompt},
            "dns": list(self.dns),
            "targets": [t.to_json() for t in self.eligible_targets()],
        }
