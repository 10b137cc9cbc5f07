"""`cloudboot doctor`'s checks: facts about the host and the workspace in, findings out.

Pure: ``Facts`` is gathered once at the edge (watcher/cli/doctor.py: PATH lookups,
``vfkit --version``, firmware files, one HTTP request), and ``check`` turns it into the
list of what is missing or too old, each with the exact command that fixes it on this
kind of host. ``cloudboot up`` runs the same checks first and stops with that list, so a
missing piece is named before anything starts instead of failing half-way.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

GUEST_PYTHON = (3, 11)
VFKIT_MIN = (0, 6, 2)
#: The host as QEMU's user network shows it to the guest (docs/wire-formats.md §6).
QEMU_HOST_ADDRESS = "10.0.2.2"
#: A plan ref host the guest agent replaces with its DHCP gateway (the host, under both).
GATEWAY = "{{.Gateway}}"
_PLAN_HOST = re.compile(r"cloudboot\.plan=oci://([^/\s]+)/")


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # `cloudboot up` cannot work without it
    WARN = "warn"  # works, but not as configured or not for everything


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out

    def __str__(self) -> str:
        text = f"{self.status.value:<7} {self.check}: {self.detail}"
        return text + (f"\n        fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at; ``tools`` maps a tool name to its path (or None)."""

    system: str  # sys.platform: "darwin", "linux"
    python: tuple[int, int]
    backend: str  # "qemu" | "vfkit"
    vm_arch: str  # "x86_64" | "aarch64"
    tools: Mapping[str, str | None]
    vfkit_version: str | None = None  # `vfkit --version` output
    firmware: str | None = None  # QEMU firmware code file found, or None
    firmware_package: str = ""
    registry_url: str = "127.0.0.1:5000"
    registry_embedded: bool = True
    registry_server: str = "auto"
    registry_reachable: bool | None = None  # only asked when the registry is not embedded
    signing_key: bool = True
    public_key: bool = True
    key_path: str = "cosign.key"
    recipe_error: str | None = None
    base: str | None = None
    compression: str = "zstd"
    demo_disk: bool = True  # a demo target disk will be made ([vm].disks empty)
    plan_cmdline: str = ""


def install(facts: Facts, debian: str, brew: str | None) -> str:
    if facts.system == "darwin":
        return f"brew install {brew}" if brew else f"not packaged for macOS ({debian})"
    return f"apt-get install {debian}"


def _version(text: str | None) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(g) for g in match.groups()) if match else None


def check_python(facts: Facts) -> Finding:
    have, want = ".".join(map(str, facts.python)), ".".join(map(str, GUEST_PYTHON))
    if facts.python == GUEST_PYTHON:
        return Finding("python", Status.OK, f"Python {have} (the guest's)")
    then = "rm -rf .venv && ./bootstrap up"
    fix = (f"brew install python@{want} && {then}" if facts.system == "darwin"
           else f"apt-get install python{want} python{want}-venv && {then}")  # fmt: skip
    detail = f"Python {have}; the guest's stdlib is compiled here and needs {want}"
    return Finding("python", Status.MISSING, detail, fix)


def check_backend(facts: Facts) -> list[Finding]:
    if facts.backend == "vfkit":
        if not facts.tools.get("vfkit"):
            return [Finding("vfkit", Status.MISSING, "vfkit not on PATH", "brew install vfkit")]
        found = _version(facts.vfkit_version)
        shown = ".".join(map(str, found)) if found else repr(facts.vfkit_version)
        if found is None or found < VFKIT_MIN:
            return [Finding("vfkit", Status.MISSING, f"vfkit {shown} is older than 0.6.2 "
                            "(no --pidfile)", "brew upgrade vfkit")]  # fmt: skip
        return [Finding("vfkit", Status.OK, f"vfkit {shown} at {facts.tools['vfkit']}")]
    binary = f"qemu-system-{facts.vm_arch}"
    package = "qemu-system-x86" if facts.vm_arch == "x86_64" else "qemu-system-arm"
    found_qemu = facts.tools.get(binary)
    out = [Finding("qemu", Status.OK, found_qemu) if found_qemu else
           Finding("qemu", Status.MISSING, f"{binary} not on PATH",
                   install(facts, package, "qemu"))]  # fmt: skip
    if facts.firmware:
        out.append(Finding("firmware", Status.OK, f"UEFI firmware {facts.firmware}"))
    else:
        out.append(Finding("firmware", Status.MISSING, f"no UEFI firmware for {facts.vm_arch}",
                           install(facts, facts.firmware_package, "qemu")))  # fmt: skip
    return out


def check_registry(facts: Facts) -> Finding:
    if not facts.registry_embedded:
        if facts.registry_reachable:
            return Finding("registry", Status.OK, f"{facts.registry_url} answers /v2/")
        return Finding("registry", Status.MISSING, f"{facts.registry_url} does not answer "
                       "(and [registry].embedded = false)",
                       "start it, or set [registry].embedded = true")  # fmt: skip
    docker = facts.tools.get("docker-registry")
    if facts.registry_server == "docker-registry" and not docker:
        return Finding("registry", Status.MISSING, "[registry].server = docker-registry, "
                       "which is not installed", install(facts, "docker-registry", None)
                       + ' (or [registry].server = "builtin")')  # fmt: skip
    chosen = "docker-registry" if facts.registry_server != "builtin" and docker else "builtin"
    return Finding("registry", Status.OK, f"embedded {chosen} on {facts.registry_url}")


def check_inputs(facts: Facts) -> list[Finding]:
    """Where boot inputs come from: the recipe's base artifact, else apt + dpkg-deb."""
    if facts.recipe_error:
        return [Finding("recipe", Status.MISSING, facts.recipe_error, "fix kernel/recipe.toml")]
    out = []
    if facts.base:
        out.append(Finding("boot inputs", Status.OK, f"base artifact {facts.base}"))
    else:
        lacking = [t for t in ("apt-get", "dpkg-deb") if not facts.tools.get(t)]
        if lacking:
            out.append(Finding("boot inputs", Status.MISSING, f"no [base] in the recipe and no "
                               f"{' or '.join(lacking)} for Debian packages",
                               "on a Linux host: cloudboot push base REF; then add to "
                               'kernel/recipe.toml: [base] oci = "REF@sha256:..."'))  # fmt: skip
        else:
            out.append(Finding("boot inputs", Status.OK, "Debian packages (apt-get, dpkg-deb)"))
    if facts.compression == "zstd" and not facts.tools.get("zstd"):
        out.append(Finding("zstd", Status.MISSING, "initramfs.compression = zstd needs zstd",
                           install(facts, "zstd", "zstd")))  # fmt: skip
    if facts.demo_disk and not facts.base and not facts.tools.get("mkfs.ext4"):
        out.append(Finding("mkfs.ext4", Status.MISSING, "the demo target disk needs mkfs.ext4 "
                           "(or a [base] artifact, which ships the disk)",
                           install(facts, "e2fsprogs", "e2fsprogs")))  # fmt: skip
    return out


def check_key(facts: Facts) -> Finding:
    if facts.signing_key and facts.public_key:
        return Finding("signing key", Status.OK, facts.key_path)
    return Finding("signing key", Status.WARN, f"{facts.key_path} missing (cloudboot up "
                   "creates one with $COSIGN_PASSWORD)", "cloudboot key generate")  # fmt: skip


def check_guest_network(facts: Facts) -> Finding:
    """The registry as the guest will see it: the plan ref baked into boot.iso."""
    if "cloudboot.plan={plan}" in facts.plan_cmdline:
        detail = f"plan ref derived from [registry].url ({facts.registry_url}) for {facts.backend}"
        return Finding("guest network", Status.OK, detail)
    match = _PLAN_HOST.search(facts.plan_cmdline)
    if match is None:
        return Finding("guest network", Status.WARN, "no cloudboot.plan=oci://HOST/... in the "
                       "recipe's cmdline: the guest will not fetch a plan")  # fmt: skip
    host, _, port = match.group(1).rpartition(":")
    host = host or match.group(1)
    reg_port = facts.registry_url.rpartition(":")[2]
    if host == GATEWAY:
        return Finding("guest network", Status.OK, f"guest asks its DHCP gateway:{port} (the "
                       "host under QEMU user networking and vfkit NAT)")  # fmt: skip
    if host == QEMU_HOST_ADDRESS:
        if facts.backend == "vfkit":
            return Finding("guest network", Status.MISSING, f"the plan ref uses {host}, QEMU's "
                           "host address; a vfkit (NAT) guest cannot reach it",
                           "use cloudboot.plan={plan} in the recipe's cmdline (derived from "
                           "[registry].url) or oci://{{.Gateway}}:PORT/...")  # fmt: skip
        if port and port != reg_port:
            return Finding("guest network", Status.MISSING, f"the guest asks {host}:{port} but "
                           f"the registry listens on port {reg_port}",
                           "make [registry].url and the plan ref use one port")  # fmt: skip
        return Finding("guest network", Status.OK, f"guest reaches the registry at {host}:{port}")
    return Finding("guest network", Status.OK, f"guest asks {match.group(1)} (not checked "
                   "from here: make sure the guest can route to it)")  # fmt: skip


def check(facts: Facts, *, vm: bool = True) -> list[Finding]:
    """Every finding; ``vm=False`` (`cloudboot up --no-vm`) leaves out the VM backend."""
    return [
        check_python(facts),
        *(check_backend(facts) if vm else []),
        check_registry(facts),
        *check_inputs(facts),
        check_key(facts),
        check_guest_network(facts),
    ]


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status is Status.MISSING]
