"""``cloudboot plan diff A B``: what changed between two plans, as text and as a guest sees it.

Each side is a plan file, a ref (``REPO:TAG`` or ``REPO@sha256:...``), or a bare digest
(``sha256:...``, looked up in the other side's repository). Two diffs come out: the HCL
text, and per bootable arch the targets the plan evaluator renders (the guest's own
code, as ``cloudboot plan render``), because a one-line edit to a variable can change
every target and a reordering of blocks can change none.

Registry bytes are untrusted: the plan layer is read only up to the publisher's own plan
size limit, and its digest is checked by the client.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from guest.contract.arch import BOOTABLE_PLAN_ARCHES
from guest.contract.errors import CloudbootError
from guest.contract.oci import MEDIA_PLAN, Manifest, Ref, is_index_media_type, parse_ref
from guest.contract.plan import PlanError, evaluate_collecting, parse_plan, plan_text
from publisher.inputs import MAX_PLAN_BYTES, read_input
from publisher.registry import RegistryClient


@dataclass(frozen=True)
class PlanSide:
    label: str  # the file, or REPO@DIGEST
    text: str
    ref: str | None  # REPO@DIGEST when it came from a registry


@dataclass(frozen=True)
class PlanDiff:
    a: PlanSide
    b: PlanSide
    text: tuple[str, ...]  # unified diff of the HCL
    targets: dict[str, tuple[str, ...]]  # arch -> unified diff of the rendered targets

    @property
    def same(self) -> bool:
        return not self.text and not any(self.targets.values())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for side in ("a", "b"):
            del doc[side]["text"]
        return {**doc, "same": self.same}

    def __str__(self) -> str:
        out = list(self.text) or [f"HCL: no difference ({self.a.label} = {self.b.label})"]
        for arch, lines in self.targets.items():
            out.append(f"--- rendered targets, {arch}: " + ("" if lines else "no difference"))
            out += lines
        return "\n".join(out)


def plan_from_registry(client: RegistryClient, ref: Ref) -> PlanSide:
    """The plan layer of what ``ref`` points at (a plan artifact, docs/wire-formats.md)."""
    data, media_type, digest = client.get_manifest(ref)
    where = f"{ref.name}@{digest}"
    if is_index_media_type(media_type):
        raise CloudbootError("an index, not a plan artifact", where=where)
    manifest = Manifest.from_bytes(data, what=where)
    layer = next((d for d in manifest.layers if d.media_type == MEDIA_PLAN), None)
    if layer is None:
        raise CloudbootError("not a plan artifact (no plan layer)", where=where)
    if layer.size > MAX_PLAN_BYTES:
        raise CloudbootError(f"plan layer of {layer.size} bytes is too large", where=where)
    return PlanSide(where, plan_text(client.get_blob(ref, layer.digest), where), where)


def load_side(spec: str, other: str | None, client: Callable[[], RegistryClient]) -> PlanSide:
    """A file when one exists at ``spec``; else a ref; a bare digest in ``other``'s repo."""
    path = Path(spec)
    if path.is_file() or spec == "-":
        data = read_input(path, limit=MAX_PLAN_BYTES, what="plan")
        return PlanSide(spec, plan_text(data, spec), None)
    if spec.startswith("sha256:"):
        if other is None or Path(other).is_file() or other.startswith("sha256:"):
            raise CloudbootError(
                "a bare digest needs the other side to be a ref (its repository)", where=spec
            )
        return plan_from_registry(client(), parse_ref(other).with_digest(spec))
    if "/" not in spec:
        raise CloudbootError("no such plan file, and not a ref (REGISTRY/REPO:TAG)", where=spec)
    return plan_from_registry(client(), parse_ref(spec))


def rendered(side: PlanSide, arch: str) -> list[str]:
    """The arch's evaluated plan as stable JSON lines.

    Where things stand in the file (the source label, each target's line) is left out:
    moving a block or adding a comment changes no target a guest boots.
    """
    try:
        evaluated, errors = evaluate_collecting(parse_plan(side.text, side.label), arch)
    except PlanError as exc:
        raise CloudbootError(f"plan does not parse: {exc}", where=side.label) from None
    if errors:
        doc: dict[str, object] = {"errors": sorted(e.message for e in errors)}
    else:
        doc = evaluated.to_json()
        doc.pop("plan", None)
        for target in doc.get("targets") or []:  # type: ignore[attr-defined]
            target.pop("where", None)
    return json.dumps(doc, indent=2, sort_keys=True).splitlines()


def _unified(a: list[str], b: list[str], a_label: str, b_label: str) -> tuple[str, ...]:
    return tuple(difflib.unified_diff(a, b, a_label, b_label, lineterm=""))


def diff_plans(a: PlanSide, b: PlanSide) -> PlanDiff:
    text = _unified(a.text.splitlines(), b.text.splitlines(), a.label, b.label)
    targets = {
        arch: _unified(rendered(a, arch), rendered(b, arch), a.label, b.label)
        for arch in BOOTABLE_PLAN_ARCHES
    }
    return PlanDiff(a, b, text, targets)
