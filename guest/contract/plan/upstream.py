"""Forms our guest accepts but upstream's guest rejects (docs/plan-language.md §5).

Upstream's documentation uses a few forms its own decoder refuses: ``disk = { ... }`` as an
attribute, ``dataset`` and ``luks-passphrase`` inside a disk, ``modpack``, the ``meta.*``
scope, a local that uses another local, and ``self.*`` inside a ``disk {}`` block. Our
guest handles them, so they are not errors; but a fleet that also boots upstream's guest
would fail at boot, so ``plan validate`` reports each use as a warning naming its line and
the construct, and ``--upstream`` (or ``[publish] upstream = true``) makes them errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.errors import PlanError
from guest.contract.plan.syntax import Attribute, Block, Body

#: Disk fields upstream's decoder does not know.
_DISK_ONLY_DOCS = ("dataset", "luks-passphrase")


class UpstreamWarning(PlanError):
    """A form upstream's guest rejects; ``construct`` names it for people and for JSON."""

    def __init__(self, construct: str, why: str, where: Location) -> None:
        super().__init__(f"upstream's guest rejects {construct}: {why}", where)
        self.construct = construct
        self.why = why

    def __reduce__(self) -> tuple[type[UpstreamWarning], tuple[str, str, Location]]:  # type: ignore[override]
        return (UpstreamWarning, (self.construct, self.why, self.where))

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "construct": self.construct}


def upstream_warnings(
    body: Body, references: ex.FindReferences = ex.references
) -> list[UpstreamWarning]:
    """Every use of a docs-only form in a parsed plan, in source order (``references``:
    ``ex.references`` or the memo the other checks of the same plan share)."""
    found: list[UpstreamWarning] = []
    for block in body.blocks:
        if block.type == "locals":
            found += _local_uses_local(block.body.attributes, references)
        elif block.type == "target":
            found += _target(block, references)
    for attr in _every_attribute(body):
        found += _meta(attr.value, references)
    return sorted(found, key=PlanError.sort_key)


def _every_attribute(body: Body) -> Iterator[Attribute]:
    stack = [body]
    while stack:
        current = stack.pop()
        yield from current.attributes
        stack.extend(b.body for b in current.blocks)


def _meta(value: ex.Expr, references: ex.FindReferences) -> Iterator[UpstreamWarning]:
    for ref in references(value):
        if ref.root == "meta":
            name = f"meta.{ref.name}" if ref.name else "meta"
            yield UpstreamWarning(
                f"{name} (the meta.* scope)",
                "its plans cannot read the metadata document",
                ref.where,
            )


def _local_uses_local(
    attributes: Iterable[Attribute], references: ex.FindReferences
) -> Iterator[UpstreamWarning]:
    for attr in attributes:
        for ref in references(attr.value):
            if ref.root == "local":
                yield UpstreamWarning(
                    f"local.{attr.name} using local.{ref.name}",
                    "its locals are evaluated without local.* in scope",
                    ref.where,
                )


def _target(block: Block, references: ex.FindReferences) -> Iterator[UpstreamWarning]:
    for attr in block.body.attributes:
        if attr.name == "modpack":
            yield UpstreamWarning("modpack", 'it reads only "modules"', attr.where)
        elif attr.name == "disk":
            yield UpstreamWarning(
                "disk = { ... } (disk as an attribute)",
                "it reads only a disk { } block",
                attr.where,
            )
            if isinstance(attr.value, ex.ObjectExpr):
                yield from _disk_fields((i.key, i.where) for i in attr.value.items)
    for child in block.body.blocks:
        if child.type != "disk":
            continue
        yield from _disk_fields((a.name, a.where) for a in child.body.attributes)
        for attr in child.body.attributes:
            for ref in references(attr.value):
                if ref.root == "self":
                    yield UpstreamWarning(
                        "self.* inside a disk { } block",
                        "its disk block is decoded without self in scope",
                        ref.where,
                    )


def _disk_fields(fields: Iterable[tuple[str, Location]]) -> Iterator[UpstreamWarning]:
    for name, where in fields:
        if name in _DISK_ONLY_DOCS:
            yield UpstreamWarning(
                f'"{name}" in a disk', "its disk knows device, fs, kernel and initrd", where
            )
