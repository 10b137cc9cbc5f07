"""OCI references, descriptors, image manifests and indexes (spec section 2).

Pure: bytes in, bytes out. Both the host publisher and the guest's pull client build on
this module, so the rules that decide where a plan lives (ref syntax, plain HTTP for
loopback, which layer is the plan, which index entry fits the CPU) exist exactly once.

Serialisation is canonical compact JSON with keys in the order Go's OCI structs use, so
the same manifest always has the same bytes and therefore the same digest: that is what
makes re-publishing an unchanged plan a no-op.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from guest.errors import CloudbootError, FormatError

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_CONFIG = "application/vnd.cloud-boot.boot.config.v1+json"
MEDIA_PLAN = "application/vnd.cloud-boot.plan.v1+hcl"
MEDIA_KERNEL = "application/vnd.cloud-boot.kernel.v1"
MEDIA_INITRD = "application/vnd.cloud-boot.initrd.v1"
MEDIA_MODULES = "application/vnd.cloud-boot.modules.v1.cpio+gzip"
MEDIA_CMDLINE = "application/vnd.cloud-boot.cmdline.v1"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"

ANNOTATION_TITLE = "org.opencontainers.image.title"

#: What a registry is asked to return for a manifest GET/HEAD: any kind we can read.
MANIFEST_ACCEPT = ", ".join((MEDIA_MANIFEST, MEDIA_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST))

OCI_PREFIX = "oci://"
DEFAULT_TAG = "latest"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_RE = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d+)?$"
)


class RefError(CloudbootError):
    """A reference that does not parse; the message names the ref."""


class DigestMismatchError(CloudbootError):
    """Content whose sha256 differs from the digest it was fetched or pinned by."""


class NoMatchingPlatformError(CloudbootError):
    pass


class NoLayerError(CloudbootError):
    pass


def digest_of(data: bytes) -> str:
    """The OCI content digest of ``data`` (``sha256:<hex>``)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str, *, what: str = "digest") -> str:
    if not _DIGEST_RE.match(digest):
        raise FormatError(f"not a sha256 digest: {digest!r}", what=what)
    return digest


class DigestVerifier:
    """Hash content while it streams and fail at the end if it is not what was pinned.

    The guest pulls kernels of tens of MiB; hashing chunk by chunk keeps them out of
    memory while still refusing anything the registry (or a proxy) altered.
    """

    def __init__(self, expected: str, *, what: str = "blob") -> None:
        self.expected = check_digest(expected, what=what)
        self.what = what
        self.size = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._hash.update(chunk)

    def check(self) -> None:
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.expected:
            raise DigestMismatchError(
                f"content digest {actual} does not match expected {self.expected}"
                f" ({self.size} bytes)",
                where=self.what,
            )


def verify_digest(data: bytes, expected: str, *, what: str = "blob") -> None:
    verifier = DigestVerifier(expected, what=what)
    verifier.update(data)
    verifier.check()


def _is_loopback(host: str) -> bool:
    name = host.lower()
    name = name[1 : name.index("]")] if name.startswith("[") else name.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Ref:
    """``registry/repository[:tag][@digest]``; a digest, when present, is what is fetched."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: cosign's docker-reference identity."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in a registry URL."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def insecure_default(self) -> bool:
        """Plain HTTP by default: true for ``localhost``, ``127.*`` and ``[::1]``."""
        return _is_loopback(self.registry)

    def with_digest(self, digest: str) -> Ref:
        return replace(self, digest=check_digest(digest))

    def with_tag(self, tag: str) -> Ref:
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_ref(text: str) -> Ref:
    """Parse ``[oci://]host[:port]/repo[:tag|@sha256:...]``; there is no default registry."""
    raw = text.strip()
    rest = raw.removeprefix(OCI_PREFIX)

    def fail(why: str) -> RefError:
        return RefError(f"invalid reference {raw!r}: {why}")

    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise fail(f"digest {digest!r} is not sha256:<64 lowercase hex>")
    if "/" not in rest:
        raise fail("expected host[:port]/repository (there is no default registry)")
    registry, path = rest.split("/", 1)
    if not _HOST_RE.match(registry):
        raise fail(f"registry host {registry!r} is not host[:port]")
    tag: str | None = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise fail(f"tag {tag!r} is not valid (letters, digits, _ . -, at most 128)")
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise fail(f"repository component {component!r} must be lowercase [a-z0-9._-]")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Ref(registry=registry, repository=path, tag=tag, digest=digest)


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str = "linux"
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
        if not isinstance(obj, dict):
            raise FormatError("platform is not an object", what="index")
        return cls(
            architecture=str(obj.get("architecture", "")),
            os=str(obj.get("os", "")),
            variant=obj.get("variant") or None,
        )

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest, size (+ annotations, platform)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def for_bytes(
        cls, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        return cls(media_type, digest_of(data), len(data), dict(annotations or {}) or None)

    @property
    def title(self) -> str | None:
        return (self.annotations or {}).get(ANNOTATION_TITLE)

    def to_json(self) -> dict[str, Any]:
        # Go's ocispec.Descriptor field order: mediaType, digest, size, annotations, platform,
        # artifactType.
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Any, *, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise FormatError("descriptor is not an object", what=what)
        try:
            media_type, digest, size = obj["mediaType"], obj["digest"], obj["size"]
        except KeyError as exc:
            raise FormatError(f"descriptor lacks {exc.args[0]!r}", what=what) from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"descriptor size {size!r} is not a non-negative integer", what=what)
        annotations = obj.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
        ):
            raise FormatError("annotations must map strings to strings", what=what)
        platform = obj.get("platform")
        return cls(
            media_type=str(media_type),
            digest=check_digest(str(digest), what=what),
            size=size,
            annotations=annotations or None,
            platform=Platform.from_json(platform) if platform is not None else None,
            artifact_type=obj.get("artifactType"),
        )


def canonical_json(obj: Any) -> bytes:
    """Compact JSON, UTF-8, keys in the order given: one value, one byte string."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        pos = getattr(exc, "pos", None) if isinstance(exc, json.JSONDecodeError) else exc.start
        raise FormatError(f"not JSON: {exc}", offset=pos, what=what) from None
    if not isinstance(obj, dict):
        raise FormatError("top level is not a JSON object", offset=0, what=what)
    return obj


def _check_media_type(obj: Mapping[str, Any], expected: str, what: str) -> None:
    if obj.get("schemaVersion") != 2:
        raise FormatError(f"schemaVersion {obj.get('schemaVersion')!r} is not 2", what=what)
    media_type = obj.get("mediaType", expected)
    if media_type != expected:
        raise FormatError(f"mediaType {media_type!r}, expected {expected!r}", what=what)


class LayerRole(enum.Enum):
    """What a layer of a cloud-boot artifact is for; titles name it when the type is generic."""

    PLAN = MEDIA_PLAN
    KERNEL = MEDIA_KERNEL
    INITRD = MEDIA_INITRD
    MODULES = MEDIA_MODULES
    CMDLINE = MEDIA_CMDLINE

    @property
    def title(self) -> str:
        return {
            LayerRole.PLAN: "plan.hcl",
            LayerRole.KERNEL: "vmlinuz",
            LayerRole.INITRD: "initrd",
            LayerRole.MODULES: "modules",
            LayerRole.CMDLINE: "cmdline",
        }[self]

    def matches_title(self, title: str) -> bool:
        if self is LayerRole.PLAN:
            return title.endswith(".hcl")
        return title == self.title


#: Layer media types too generic to say anything; such layers are recognised by title.
GENERIC_LAYER_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "",
    }
)

#: Artifact layers in the order the spec puts them.
ARTIFACT_ROLES = (LayerRole.KERNEL, LayerRole.INITRD, LayerRole.MODULES, LayerRole.CMDLINE)


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest (``application/vnd.oci.image.manifest.v1+json``)."""

    config: Descriptor
    layers: Sequence[Descriptor] = ()
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None
    subject: Descriptor | None = None
    media_type: str = field(default=MEDIA_MANIFEST)

    def to_json(self) -> dict[str, Any]:
        # Go's ocispec.Manifest order: schemaVersion, mediaType, artifactType, config,
        # layers, subject, annotations.
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    def __bytes__(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        return digest_of(bytes(self))

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "manifest") -> Manifest:
        obj = _load_json(data, what)
        media_type = obj.get("mediaType", MEDIA_MANIFEST)
        expected = MEDIA_DOCKER_MANIFEST if media_type == MEDIA_DOCKER_MANIFEST else MEDIA_MANIFEST
        _check_media_type(obj, expected, what)
        layers = obj.get("layers", [])
        if not isinstance(layers, list):
            raise FormatError("layers is not a list", what=what)
        return cls(
            config=Descriptor.from_json(obj.get("config"), what=f"{what} config"),
            layers=tuple(
                Descriptor.from_json(x, what=f"{what} layer {i}") for i, x in enumerate(layers)
            ),
            annotations=obj.get("annotations") or None,
            artifact_type=obj.get("artifactType"),
            subject=Descriptor.from_json(obj["subject"], what=f"{what} subject")
            if obj.get("subject")
            else None,
            media_type=expected,
        )

    def layer(self, role: LayerRole) -> Descriptor:
        """The first layer with the role's media type, else a generic layer titled for it."""
        for layer in self.layers:
            if layer.media_type == role.value:
                return layer
        for layer in self.layers:
            if layer.media_type in GENERIC_LAYER_TYPES and role.matches_title(layer.title or ""):
                return layer
        raise NoLayerError(f"manifest has no {role.name.lower()} layer (mediaType {role.value})")

    def find_layer(self, role: LayerRole) -> Descriptor | None:
        try:
            return self.layer(role)
        except NoLayerError:
            return None

    def plan_layer(self) -> Descriptor:
        return self.layer(LayerRole.PLAN)


@dataclass(frozen=True)
class Index:
    """An OCI image index: one manifest per platform."""

    manifests: Sequence[Descriptor]
    annotations: Mapping[str, str] | None = None
    media_type: str = field(default=MEDIA_INDEX)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    def __bytes__(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        return digest_of(bytes(self))

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "index") -> Index:
        obj = _load_json(data, what)
        media_type = obj.get("mediaType", MEDIA_INDEX)
        expected = MEDIA_DOCKER_LIST if media_type == MEDIA_DOCKER_LIST else MEDIA_INDEX
        _check_media_type(obj, expected, what)
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise FormatError("manifests is not a list", what=what)
        return cls(
            manifests=tuple(
                Descriptor.from_json(m, what=f"{what} entry {i}") for i, m in enumerate(manifests)
            ),
            annotations=obj.get("annotations") or None,
            media_type=expected,
        )

    def resolve(self, architecture: str, os: str = "linux") -> Descriptor:
        """The first entry for ``os``/``architecture`` (spec: first match wins)."""
        for entry in self.manifests:
            if (
                entry.platform
                and entry.platform.os == os
                and (entry.platform.architecture == architecture)
            ):
                return entry
        offered = ", ".join(str(m.platform) for m in self.manifests if m.platform) or "none"
        raise NoMatchingPlatformError(
            f"index has no manifest for {os}/{architecture} (offers: {offered})"
        )


def is_index_media_type(media_type: str) -> bool:
    return media_type in (MEDIA_INDEX, MEDIA_DOCKER_LIST)


def media_type_of(data: bytes, header: str | None = None) -> str:
    """A manifest's media type: its own ``mediaType`` field, else the HTTP Content-Type."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("mediaType"), str):
        return str(obj["mediaType"])
    if isinstance(obj, dict) and "manifests" in obj:
        return MEDIA_INDEX
    return (header or MEDIA_MANIFEST).split(";")[0].strip()


def plan_config() -> bytes:
    """Config blob of a plan artifact (spec: ``{"created":null}``)."""
    return canonical_json({"created": None})


def artifact_config(architecture: str) -> bytes:
    """Config blob of a kernel/initrd artifact for one architecture (keys sorted, as Go)."""
    return canonical_json({"architecture": architecture, "created": None, "os": "linux"})


def plan_manifest(
    plan: bytes, title: str, annotations: Mapping[str, str] | None = None
) -> tuple[Manifest, bytes]:
    """The plan artifact of spec section 2: (manifest, config blob); the plan is its layer."""
    config = plan_config()
    manifest = Manifest(
        config=Descriptor.for_bytes(MEDIA_CONFIG, config),
        layers=(Descriptor.for_bytes(MEDIA_PLAN, plan, {ANNOTATION_TITLE: title}),),
        annotations=dict(annotations or {}) or None,
    )
    return manifest, config


def artifact_manifest(
    architecture: str,
    layers: Mapping[LayerRole, Descriptor],
    annotations: Mapping[str, str] | None = None,
) -> tuple[Manifest, bytes]:
    """A kernel/initrd artifact: layers put in the spec's order, titled by role."""
    config = artifact_config(architecture)
    ordered = []
    for role in ARTIFACT_ROLES:
        if role in layers:
            desc = layers[role]
            ordered.append(
                Descriptor(role.value, desc.digest, desc.size, {ANNOTATION_TITLE: role.title})
            )
    if LayerRole.KERNEL not in layers:
        raise CloudbootError("a kernel artifact needs a kernel layer")
    manifest = Manifest(
        config=Descriptor.for_bytes(MEDIA_CONFIG, config),
        layers=tuple(ordered),
        annotations=dict(annotations or {}) or None,
    )
    return manifest, config
