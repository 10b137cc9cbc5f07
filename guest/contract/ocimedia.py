"""The media types and layer roles of cloud-boot's OCI artifacts (docs/wire-formats.md §2).

Names only, no parsing: ``guest.contract.oci`` re-exports them and is the one import for
OCI names, as it is for the refs of ``guest.contract.ociref``.
"""

from __future__ import annotations

import enum

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
#: Extra layers of distribution artifacts (docs/wire-formats.md §2.3): Alpine's modloop (a
#: squashfs of modules) and apkovl (a system overlay tar.gz), a live system's squashfs.
MEDIA_MODLOOP = "application/vnd.cloud-boot.modloop.v1+squashfs"
MEDIA_APKOVL = "application/vnd.cloud-boot.apkovl.v1+tar.gz"
MEDIA_SQUASHFS = "application/vnd.cloud-boot.squashfs.v1"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"

ANNOTATION_TITLE = "org.opencontainers.image.title"

#: What a registry is asked to return for a manifest GET/HEAD: any kind we can read.
MANIFEST_ACCEPT = ", ".join((MEDIA_MANIFEST, MEDIA_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST))


class LayerRole(enum.Enum):
    """What a layer of a cloud-boot artifact is for; titles name it when the type is unknown."""

    PLAN = MEDIA_PLAN
    KERNEL = MEDIA_KERNEL
    INITRD = MEDIA_INITRD
    MODULES = MEDIA_MODULES
    MODLOOP = MEDIA_MODLOOP
    APKOVL = MEDIA_APKOVL
    SQUASHFS = MEDIA_SQUASHFS
    CMDLINE = MEDIA_CMDLINE

    @property
    def title(self) -> str:
        """The title we write on a layer of this role (the first name it is known by)."""
        return _ROLE_TITLES[self][0]

    def matches_title(self, title: str) -> bool:
        if self is LayerRole.PLAN:
            return title.endswith(".hcl")
        return title in _ROLE_TITLES[self]


#: Titles that name a role on a layer whose media type says nothing we know (upstream's
#: list, docs/wire-formats.md §2.3); the first is the one we write.
_ROLE_TITLES: dict[LayerRole, tuple[str, ...]] = {
    LayerRole.PLAN: ("plan.hcl",),
    LayerRole.KERNEL: ("vmlinuz", "kernel"),
    LayerRole.INITRD: ("initrd", "initramfs"),
    LayerRole.MODULES: ("modules",),
    LayerRole.MODLOOP: ("modloop", "modloop-virt"),
    LayerRole.APKOVL: ("apkovl",),
    LayerRole.SQUASHFS: ("squashfs", "filesystem.squashfs"),
    LayerRole.CMDLINE: ("cmdline",),
}

#: Media types that name a role: a layer with any other type is recognised by its title.
ROLE_MEDIA_TYPES = frozenset(role.value for role in LayerRole)


#: Artifact layers in the order of docs/wire-formats.md §2.3 (the extra layers after the
#: modules).
ARTIFACT_ROLES = (
    LayerRole.KERNEL,
    LayerRole.INITRD,
    LayerRole.MODULES,
    LayerRole.MODLOOP,
    LayerRole.APKOVL,
    LayerRole.SQUASHFS,
    LayerRole.CMDLINE,
)
