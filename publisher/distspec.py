"""What the OCI distribution spec promises in a registry's answers, checked before we trust it.

A push is "done" only when the registry said so the way the spec says it: 202 Accepted
with a ``Location`` for an upload session and each chunk, 201 Created for a finished blob
or manifest, and a ``Docker-Content-Digest`` (when sent) equal to the digest we pushed.
A web server that answers ``200 text/html`` to everything (a captive portal, a proxy's
error page, the wrong port) therefore fails the push instead of being taken for a
registry (docs/wire-formats.md §2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from publisher.retry import RegistryError

if TYPE_CHECKING:
    import requests

    from guest.contract.oci import Ref

DIGEST_HEADER = "Docker-Content-Digest"


def not_a_registry(resp: requests.Response, where: str, what: str) -> str:
    """The message for an answer no registry gives (a 2xx/3xx of the wrong kind)."""
    kind = resp.headers.get("Content-Type", "no content type").split(";")[0]
    return (
        f"unexpected {resp.status_code} ({kind}) for {where} ({what}): this server does not"
        " answer as an OCI registry; check the registry address and port"
    )


def require_location(resp: requests.Response, ref: Ref, what: str) -> str:
    """The upload session URL of a 202; its absence means the server is no registry."""
    location = resp.headers.get("Location")
    if not location:
        raise RegistryError(
            f"{resp.status_code} without a Location header for {ref.name} ({what}): this"
            " server does not answer as an OCI registry",
            status=resp.status_code,
        )
    return location


def require_digest(resp: requests.Response, ref: Ref, digest: str, what: str) -> None:
    """A 201's ``Docker-Content-Digest``, when present, must name what we sent."""
    answered = resp.headers.get(DIGEST_HEADER)
    if answered is not None and answered != digest:
        raise RegistryError(
            f"registry stored {answered} for {ref.name} ({what}) but we sent {digest}:"
            " the content was changed on the way (a proxy?) or the registry is broken",
            status=resp.status_code,
        )


def require_not_html(resp: requests.Response, where: str, what: str) -> None:
    """A registry never answers a manifest or blob request with a web page."""
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        raise RegistryError(not_a_registry(resp, where, what), status=resp.status_code)
