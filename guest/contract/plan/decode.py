"""Positioned HCL document -> :class:`Plan`: which blocks and attributes a plan may have.

Structure errors (unknown or repeated names, labels where none belong, a ``disk`` given
twice) are collected, not raised one at a time, so ``plan validate`` reports them all.
Both spellings of a disk source are accepted, as both occur in the wild: the block
``disk { ... }`` and the attribute ``disk = { ... }``. ``modpack`` (used by the docs) is
read as ``modules``.
"""

from __future__ import annotations

from collections.abc import Iterable

from guest.contract.errors import Location
from guest.contract.plan import expr as ex
from guest.contract.plan.errors import PlanError
from guest.contract.plan.model import DISK_KEYS, DiskDecl, MenuDecl, Plan, TargetDecl
from guest.contract.plan.syntax import Attribute, Block, Body

TOP_ATTRIBUTES = ("default_target", "dns")
TOP_BLOCKS = ("locals", "menu", "target")
MENU_ATTRIBUTES = ("timeout", "prompt")
TARGET_ATTRIBUTES = (
    "label", "version", "arch", "cmdline", "index", "kernel", "initrd", "modules", "subplan",
)  # fmt: skip
ALIASES = {"modpack": "modules"}


def _first(where: Location) -> str:
    return f"(first at {where.line}:{where.column})"


def _unknown(kind: str, name: str, place: str, expected: Iterable[str]) -> str:
    import difflib  # only on the error path: keeps the guest's import time down

    options = sorted(expected)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f'unknown {kind} "{name}" {place}{hint} (expected one of: {", ".join(options)})'


class _Decoder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[PlanError] = []

    def error(self, message: str, where: Location) -> None:
        self.errors.append(PlanError(message, where))

    def unique(self, attributes: Iterable[Attribute], place: str) -> dict[str, Attribute]:
        seen: dict[str, Attribute] = {}
        for attr in attributes:
            name = ALIASES.get(attr.name, attr.name) if place.startswith("in target") else attr.name
            if name in seen:
                first = seen[name]
                at = _first(first.where)
                if first.name != attr.name:
                    message = f'"{first.name}" and "{attr.name}" are the same; set one {place} {at}'
                else:
                    message = f'"{attr.name}" is set twice {place} {at}'
                self.error(message, attr.where)
                continue
            seen[name] = attr
        return seen

    def no_labels(self, block: Block) -> None:
        if block.labels:
            self.error(
                f'a {block.type} block takes no labels, got "{block.labels[0]}"', block.where
            )

    def no_blocks(self, body: Body, place: str) -> None:
        for block in body.blocks:
            self.error(f'unexpected block "{block.type}" {place}', block.where)

    def plan(self, body: Body) -> Plan:
        top = self.unique(body.attributes, "at the top level")
        for name, attr in top.items():
            if name not in TOP_ATTRIBUTES:
                self.error(
                    _unknown("attribute", name, "at the top level", TOP_ATTRIBUTES), attr.where
                )
        locals_: dict[str, Attribute] = {}
        menus: list[MenuDecl] = []
        targets: list[TargetDecl] = []
        for block in body.blocks:
            if block.type == "locals":
                self.locals_block(block, locals_)
            elif block.type == "menu":
                menus.append(self.menu_block(block))
            elif block.type == "target":
                target = self.target(block)
                if target is not None:
                    targets.append(target)
            else:
                message = _unknown("block", block.type, "at the top level", TOP_BLOCKS)
                self.error(message, block.where)
        for extra in menus[1:]:
            self.error(f"only one menu block is allowed {_first(menus[0].where)}", extra.where)
        menu = menus[0] if menus else None
        if not targets and not self.errors:
            self.error('the plan defines no targets; add a target "name" { ... } block', body.where)
        return Plan(
            source=self.source,
            default_target=top.get("default_target"),
            locals=locals_,
            menu=menu,
            dns=top.get("dns"),
            targets=tuple(targets),
        )

    def locals_block(self, block: Block, into: dict[str, Attribute]) -> None:
        """Locals blocks merge into one namespace, as upstream: a name set again in a later
        block replaces the earlier one; within one block it is an error (HCL's rule)."""
        self.no_labels(block)
        self.no_blocks(block.body, "in locals")
        this_block: dict[str, Attribute] = {}
        for attr in block.body.attributes:
            if attr.name in this_block:
                message = (
                    f"local.{attr.name} is defined twice {_first(this_block[attr.name].where)}"
                )
                self.error(message, attr.where)
                continue
            this_block[attr.name] = into[attr.name] = attr

    def menu_block(self, block: Block) -> MenuDecl:
        self.no_labels(block)
        self.no_blocks(block.body, "in menu")
        attrs = self.unique(block.body.attributes, "in menu")
        for name, attr in attrs.items():
            if name not in MENU_ATTRIBUTES:
                self.error(_unknown("attribute", name, "in menu", MENU_ATTRIBUTES), attr.where)
        return MenuDecl(attrs, block.where)

    def target(self, block: Block) -> TargetDecl | None:
        if len(block.labels) != 1:
            self.error('a target block needs exactly one name: target "name" { ... }', block.where)
            return None
        name = block.labels[0]
        place = f'in target "{name}"'
        attrs = self.unique(block.body.attributes, place)
        disk_attr = attrs.pop("disk", None)
        for key, attr in attrs.items():
            if key not in TARGET_ATTRIBUTES:
                expected = (*TARGET_ATTRIBUTES, "disk", "modpack")
                self.error(_unknown("attribute", attr.name, place, expected), attr.where)
        disks: list[DiskDecl] = []
        if disk_attr is not None:
            disks.extend(self.disk_from_object(disk_attr, place))
        for child in block.body.blocks:
            if child.type == "disk":
                self.no_labels(child)
                self.no_blocks(child.body, f"in the disk of target {name!r}")
                disks.append(self.disk_fields(child.body.attributes, child.where, place))
            else:
                self.error(
                    f'unexpected block "{child.type}" {place} (only disk {{ }})', child.where
                )
        if len(disks) > 1:
            self.error(
                f"disk is given twice {place} {_first(disks[0].where)}",
                disks[1].where,
            )
        return TargetDecl(name, attrs, disks[0] if disks else None, block.where)

    def disk_from_object(self, attr: Attribute, place: str) -> list[DiskDecl]:
        if not isinstance(attr.value, ex.ObjectExpr):
            self.error(f"disk must be a block or an object {{ device = ... }} {place}", attr.where)
            return []
        for item in attr.value.items:
            if item.key_expr is not None:
                self.error(f"disk keys must be names, not expressions {place}", item.where)
        items = [Attribute(i.key, i.value, i.where) for i in attr.value.items]
        return [self.disk_fields(items, attr.where, place)]

    def disk_fields(self, items: Iterable[Attribute], where: Location, place: str) -> DiskDecl:
        fields = self.unique(items, f"in the disk {place}")
        for name, attr in fields.items():
            if name not in DISK_KEYS:
                self.error(_unknown("disk field", name, place, DISK_KEYS), attr.where)
        if "device" not in fields:
            self.error(f"the disk {place} needs a device", where)
        return DiskDecl(fields, where)


def decode(body: Body, source: str) -> tuple[Plan, list[PlanError]]:
    """The plan and every structure error found (the plan is usable for further checks)."""
    decoder = _Decoder(source)
    plan = decoder.plan(body)
    return plan, decoder.errors
