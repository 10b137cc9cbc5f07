"""Go-template text in a target's cmdline, rendered by the guest (docs/wire-formats.md §1.7).

Plans may write ``ip={{.IPSpec}}`` so the next kernel reuses the lease the guest already
has. The host passes such text through untouched; only the guest knows the values.
Upstream (cloud-boot-init, Go ``text/template``) knows these fields: ``IP``, ``Netmask``,
``CIDR``, ``Gateway``, ``Iface``, ``DNS``, ``DNSAll`` (a list), ``IPSpec``, ``Registry``,
``RegistryScheme``, ``RegistryBase`` and ``ModloopURL``; we add ``Hostname`` and ``MAC``
from the lease. The subset of the template language rendered here is what cmdlines use:
``{{.Field}}``, ``{{index .DNSAll N}}`` and the ``{{-``/``-}}`` trim markers.

Upstream renders an unknown field as ``<no value>`` and a broken template as the raw
text; **our rule**: both are errors naming the field and its offset, because either
would boot the target with a cmdline nobody wrote. A field the guest cannot know on this
boot (no DHCP lease when the plan was embedded) is an error for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from guest.agent.lease import Lease
from guest.contract.errors import CloudbootError
from guest.contract.plan import OciSource, Source

Value = str | Sequence[str] | None
#: What a field is when its value is unknown on this boot, by field name.
LEASE_FIELDS = ("IP", "Netmask", "CIDR", "Gateway", "Iface", "DNS", "DNSAll", "IPSpec",
                "Hostname", "MAC")  # fmt: skip
REGISTRY_FIELDS = ("Registry", "RegistryScheme", "RegistryBase", "ModloopURL")
KNOWN_FIELDS = LEASE_FIELDS + REGISTRY_FIELDS

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_FIELD = re.compile(r"^\.([A-Za-z_][A-Za-z0-9_]*)$")
_INDEX = re.compile(r"^index\s+\.([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)$")


class TemplateError(CloudbootError):
    pass


def has_template(text: str) -> bool:
    return "{{" in text


def render(text: str, fields: Mapping[str, Value], *, where: str = "cmdline") -> str:
    """``text`` with every action replaced; plain text (no ``{{``) comes back as is."""
    if not has_template(text):
        return text
    out: list[str] = []
    pos = 0
    for match in _ACTION.finditer(text):
        literal = text[pos : match.start()]
        if match.group(1):
            literal = literal.rstrip()
        out.append(literal)
        out.append(_action(match.group(2), fields, where, match.start()))
        pos = match.end()
        if match.group(3):
            while pos < len(text) and text[pos].isspace():
                pos += 1
    rest = text[pos:]
    if "{{" in rest:
        offset = pos + rest.index("{{")
        raise TemplateError(f"unterminated template action at offset {offset}", where=where)
    out.append(rest)
    return "".join(out)


def _action(body: str, fields: Mapping[str, Value], where: str, offset: int) -> str:
    if m := _FIELD.match(body):
        value = _lookup(m.group(1), fields, where, offset)
        return value if isinstance(value, str) else "[" + " ".join(value) + "]"
    if m := _INDEX.match(body):
        value = _lookup(m.group(1), fields, where, offset)
        index = int(m.group(2))
        if isinstance(value, str):
            raise TemplateError(
                f"{{{{{body}}}}} at offset {offset}: .{m.group(1)} is not a list", where=where
            )
        if index >= len(value):
            raise TemplateError(
                f"{{{{{body}}}}} at offset {offset}: .{m.group(1)} has {len(value)} entries",
                where=where,
            )
        return value[index]
    raise TemplateError(
        f"unsupported template action {{{{{body}}}}} at offset {offset}: the guest renders "
        "{{.Field}} and {{index .DNSAll N}}",
        where=where,
    )


def _lookup(name: str, fields: Mapping[str, Value], where: str, offset: int) -> str | Sequence[str]:
    if name not in fields:
        raise TemplateError(
            f"unknown template field .{name} at offset {offset} "
            f"(the guest knows: {', '.join('.' + f for f in KNOWN_FIELDS)})",
            where=where,
        )
    value = fields[name]
    if value is None:
        why = "no DHCP lease on this boot" if name in LEASE_FIELDS else "no OCI source"
        raise TemplateError(f"template field .{name} at offset {offset}: {why}", where=where)
    return value


def plan_ref(text_ref: str, lease: Lease | None) -> str:
    """``oci://{{.Gateway}}:5000/...``: the host as this guest sees it (README, "macOS").

    A workspace's embedded registry listens on the host's loopback; the guest reaches
    the host at its DHCP gateway under every VM backend (QEMU user networking's
    10.0.2.2, vfkit's vmnet bridge address), so the baked ref names the gateway and
    the guest fills it in from its lease. Only the lease's fields are known here.
    """
    if not has_template(text_ref):
        return text_ref
    return render(text_ref, lease_fields(lease), where="cloudboot.plan")


def lease_fields(lease: Lease | None) -> dict[str, Value]:
    """The network half of the fields; all ``None`` (unknown) without a lease."""
    if lease is None:
        return dict.fromkeys(LEASE_FIELDS)
    return {
        "IP": lease.ip,
        "Netmask": lease.netmask,
        "CIDR": lease.cidr,
        "Gateway": lease.gateway,
        "Iface": lease.interface,
        "DNS": lease.dns[0] if lease.dns else "",
        "DNSAll": list(lease.dns),
        "IPSpec": lease.ipspec,
        "Hostname": lease.hostname,
        "MAC": lease.mac,
    }


def registry_fields(registry: str | None, *, plain_http: bool) -> dict[str, Value]:
    """The registry half, from the target's primary OCI ref (``None`` for disk targets).

    ``ModloopURL`` is empty here (as upstream renders it for artifacts without one); the
    agent fills it in once the artifact's layers are known (guest.agent.layers).
    """
    if registry is None:
        return dict.fromkeys(REGISTRY_FIELDS)
    scheme = "http" if plain_http else "https"
    return {
        "Registry": registry,
        "RegistryScheme": scheme,
        "RegistryBase": f"{scheme}://{registry}/v2",
        "ModloopURL": "",
    }


def target_fields(lease: Lease | None, source: Source, *, insecure: bool) -> dict[str, Value]:
    """Every field for one target: the lease's, and the registry of its primary OCI ref
    (the first of index, kernel, initrd, modules, as upstream picks it)."""
    fields = lease_fields(lease)
    if not isinstance(source, OciSource):
        fields.update(registry_fields(None, plain_http=False))
        return fields
    from guest.contract.ociref import parse_ref

    primary = next(r for r in (source.index, source.kernel, source.initrd, source.modules) if r)
    ref = parse_ref(primary)
    fields.update(registry_fields(ref.registry, plain_http=insecure or ref.insecure_default))
    return fields
