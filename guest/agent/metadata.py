"""The metadata-URL document (``cloudboot.metadata.url``): facts and overrides
(docs/wire-formats.md §5.1).

One JSON object does two jobs. The whole object is ``meta.*`` in plan expressions; its
``cloudboot`` object (upstream's shape: ``{"cloudboot": {"target": "web", ...}}``)
overrides ``cloudboot.<key>`` knobs, and wins over the kernel command line and the plan
(precedence cmdline < plan < metadata). ``parse_metadata`` is pure; ``fetch_document``
is the one function here that touches the network.

**Our rule** beyond upstream (docs/trust-model.md): the document is not signed (it
usually comes over plain HTTP from a link-local address), so it is an allow-list: it may
choose among what the signed plan offers (``target``, the ``menu`` knobs), name DNS
servers (``dns``) and make the signature policy stricter (``cosign``, never weaker).
Everything else (``plan``, ``cmdline``, ``debug``, ``insecure``, ``metadata.*``,
``rollback``, any unknown key) comes only from the baked kernel command line; such keys
are reported back as refused and the boot goes on with the command line's values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guest.agent.cmdline import PREFIX
from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    from guest.agent.console import Console

MAX_DOCUMENT = 1 << 20
_POLICY_STRENGTH = {"off": 0, "warn": 1, "enforce": 2}
#: What an unsigned document may set (``cosign`` only to a stricter policy).
ALLOWED_FROM_METADATA = frozenset({"target", "dns", "menu", "menu.timeout", "menu.prompt"})


class MetadataError(CloudbootError):
    pass


@dataclass(frozen=True)
class Metadata:
    """``document`` feeds ``meta.*``; ``overrides`` are full ``cloudboot.*`` keys."""

    document: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, str] = field(default_factory=dict)
    refused: tuple[str, ...] = ()


def parse_metadata(data: bytes, params: Mapping[str, str], *, where: str) -> Metadata:
    """Decode the document and pick the overrides it may apply on top of ``params``."""
    if len(data) > MAX_DOCUMENT:
        raise MetadataError(f"document larger than {MAX_DOCUMENT} bytes", where=where)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"not JSON: {exc}", where=where) from None
    if not isinstance(doc, dict):
        raise MetadataError(f"a JSON object is needed, got {type(doc).__name__}", where=where)
    block = doc.get("cloudboot", {})
    if not isinstance(block, dict):
        raise MetadataError('"cloudboot" must be an object of knob: value', where=where)
    overrides: dict[str, str] = {}
    refused: list[str] = []
    for key, value in block.items():
        full = PREFIX + key
        text = _knob_text(value, full, where)
        allowed = key in ALLOWED_FROM_METADATA or (key == "cosign" and not _weakens(params, text))
        if not allowed:
            refused.append(full)
            continue
        overrides[full] = text
    return Metadata(doc, overrides, tuple(refused))


def _knob_text(value: object, key: str, where: str) -> str:
    """Knobs are strings on the cmdline; JSON booleans and numbers read as they would."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # cloudboot.dns as a JSON list
    raise MetadataError(f"{key}: a string, number or boolean is needed", where=where)


def _weakens(params: Mapping[str, str], wanted: str) -> bool:
    current = params.get(PREFIX + "cosign", "enforce").lower()
    return _POLICY_STRENGTH.get(wanted.lower(), -1) < _POLICY_STRENGTH.get(current, 2)


def report(metadata: Metadata, params: Mapping[str, str], console: Console) -> None:
    """Say which knobs the document refused and which it set (tokens masked)."""
    for key in metadata.refused:
        console.warn(f"metadata may not set {key}; the command line's value stays")
    for key, value in metadata.overrides.items():
        shown = "***" if key.endswith("token") else repr(value)
        note = " (overrides the cmdline)" if params.get(key) else ""
        console.log(f"metadata: {key}={shown}{note}")


def apply(params: Mapping[str, str], metadata: Metadata) -> dict[str, str]:
    """The command line's parameters with the metadata overrides on top."""
    merged = dict(params)
    merged.update(metadata.overrides)
    return merged


def fetch_document(url: str, token: str = "", *, timeout: float = 10.0) -> bytes:
    """GET the document; ``cloudboot.metadata.token`` is sent as a bearer token and never
    appears in an error (nor follows a redirect to another host)."""
    from guest.agent import httpclient

    private = {"Authorization": "Bearer " + token} if token else None
    shown = httpclient.redact_url(url)  # the console is not the place for a query's token
    try:
        with httpclient.get(
            url, {"Accept": "application/json"}, private=private, timeout=timeout
        ) as r:
            if r.status != 200:
                raise MetadataError(f"HTTP {r.status} {r.reason}", where=shown)
            return r.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise MetadataError(f"cannot fetch: {exc.strerror or exc}", where=shown) from None
