"""OCI references, descriptors, image manifests and indexes (docs/wire-formats.md §2).

Pure: bytes in, bytes out. Both the host publisher and the guest's pull client build on
this module, so the rules that decide where a plan lives (ref syntax, plain HTTP for
loopback, which layer is the plan, which index entry fits the CPU) exist exactly once.

Serialisation is canonical compact JSON with keys in the order Go's OCI structs use, so
the same manifest always has the same bytes and therefore the same digest: that is what
makes re-publishing an unchanged plan a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guest.contract.errors import CloudbootError, FormatError

# Re-exported: guest.contract.oci is the one import for OCI names (refs and digests live in
# ociref, media types and layer roles in ocimedia).
from guest.contract.ocimedia import (
    ANNOTATION_TITLE as ANNOTATION_TITLE,
    ARTIFACT_ROLES as ARTIFACT_ROLES,
    MANIFEST_ACCEPT as MANIFEST_ACCEPT,
    MEDIA_APKOVL as MEDIA_APKOVL,
    MEDIA_CMDLINE as MEDIA_CMDLINE,
    MEDIA_CONFIG as MEDIA_CONFIG,
    MEDIA_COSIGN_SIMPLESIGNING as MEDIA_COSIGN_SIMPLESIGNING,
    MEDIA_DOCKER_LIST as MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST as MEDIA_DOCKER_MANIFEST,
    MEDIA_INDEX as MEDIA_INDEX,
    MEDIA_INITRD as MEDIA_INITRD,
    MEDIA_KERNEL as MEDIA_KERNEL,
    MEDIA_MANIFEST as MEDIA_MANIFEST,
    MEDIA_MODLOOP as MEDIA_MODLOOP,
    MEDIA_MODULES as MEDIA_MODULES,
    MEDIA_OCI_CONFIG as MEDIA_OCI_CONFIG,
    MEDIA_PLAN as MEDIA_PLAN,
    MEDIA_SQUASHFS as MEDIA_SQUASHFS,
    ROLE_MEDIA_TYPES as ROLE_MEDIA_TYPES,
    LayerRole as LayerRole,
)
from guest.contract.ociref import (
    DEFAULT_TAG as DEFAULT_TAG,
    OCI_PREFIX as OCI_PREFIX,
    DigestMismatchError as DigestMismatchError,
    DigestVerifier as DigestVerifier,
    Ref as Ref,
    RefError as RefError,
    check_digest as check_digest,
    digest_of as digest_of,
    parse_ref as parse_ref,
    verify_digest as verify_digest,
)


class NoMatchingPlatformError(CloudbootError):
    pass


class NoLayerError(CloudbootError):
    pass


@dataclass(frozen=True)
class Platform:
    """An image index entry's platform (architecture, os, variant)."""

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


#: Layers a manifest may have: a cloudboot artifact has at most four, a cosign signature
#: manifest one per signature.
MAX_LAYERS = 64


class _CanonicalDocument:
    """Serialisation shared by manifests and indexes: the bytes ARE the identity.

    Registries address a manifest by the sha256 of its exact bytes, so every document is
    written one way only (compact JSON, fixed key order) and its digest follows from that.
    """

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        return digest_of(bytes(self))


@dataclass(frozen=True)
class Manifest(_CanonicalDocument):
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

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "manifest") -> Manifest:
        obj = _load_json(data, what)
        media_type = obj.get("mediaType", MEDIA_MANIFEST)
        expected = MEDIA_DOCKER_MANIFEST if media_type == MEDIA_DOCKER_MANIFEST else MEDIA_MANIFEST
        _check_media_type(obj, expected, what)
        layers = obj.get("layers", [])
        if not isinstance(layers, list):
            raise FormatError("layers is not a list", what=what)
        if len(layers) > MAX_LAYERS:
            # each layer of a signature manifest is a blob fetched: bound the work
            raise FormatError(f"{len(layers)} layers, more than {MAX_LAYERS}", what=what)
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
        """The first layer with the role's media type, else the first layer titled for it
        whose media type names no role (upstream's rule, docs/wire-formats.md §2.3)."""
        for layer in self.layers:
            if layer.media_type == role.value:
                return layer
        for layer in self.layers:
            if layer.media_type not in ROLE_MEDIA_TYPES and role.matches_title(layer.title or ""):
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
class Index(_CanonicalDocument):
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
        """The first ``os``/``architecture`` entry wins (docs/wire-formats.md §2.4)."""
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
    """Config blob of a plan artifact (docs/wire-formats.md §2.2: ``{"created":null}``)."""
    return canonical_json({"created": None})


def artifact_config(architecture: str) -> bytes:
    """Config blob of a kernel/initrd artifact for one architecture (keys sorted, as Go)."""
    return canonical_json({"architecture": architecture, "created": None, "os": "linux"})


def plan_manifest(
    plan: bytes, title: str, annotations: Mapping[str, str] | None = None
) -> tuple[Manifest, bytes]:
    """The plan artifact (docs/wire-formats.md §2.2): (manifest, config); the plan is its layer."""
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
    """A kernel/initrd artifact: layers in docs/wire-formats.md §2.3's order, titled by role."""
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
