"""OCI references and content digests: where an artifact lives and how it is pinned.

Pure. ``parse_ref`` holds the project's reference rules (docs/wire-formats.md §2.5): an
``oci://`` prefix is stripped, there is no default registry, and loopback registries are
spoken to over plain HTTP unless told otherwise.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, replace

from guest.contract.errors import CloudbootError, FormatError

OCI_PREFIX = "oci://"
DEFAULT_TAG = "latest"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
#: ``_`` may lead a label: ``_oci._tcp.<domain>`` names a DNS SRV record set (§2.5)
_HOST_RE = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?::\d+)?$"
)


class RefError(CloudbootError):
    """A reference that does not parse; the message names the ref."""


class DigestMismatchError(CloudbootError):
    """Content whose sha256 differs from the digest it was fetched or pinned by."""


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
    port = registry.rpartition(":")[2] if not registry.endswith("]") else ""
    if port.isdigit() and not 0 < int(port) < 65536:
        raise fail(f"port {port} is out of range (1-65535)")
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
