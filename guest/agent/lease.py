"""The DHCP lease the guest got, and the resolv.conf it implies (docs/wire-formats.md §5.1, §5.2).

busybox ``udhcpc`` hands the lease to its script as shell variables; our script
(``publisher.media.guestpack.UDHCPC_SCRIPT``) copies them into ``key=value`` lines so
the agent can use them later without a second DHCP round: cmdline templates such as
``ip={{.IPSpec}}`` (``guest.agent.template``) are rendered from this, and the resolvers
decide ``/etc/resolv.conf`` together with the plan's ``dns`` and ``cloudboot.dns``.
Pure: text in, values out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from guest.contract.errors import CloudbootError

#: Where the udhcpc script leaves the lease inside the guest.
LEASE_FILE = "run/cloud-boot/lease.env"


class LeaseError(CloudbootError):
    pass


@dataclass(frozen=True)
class Lease:
    """One IPv4 lease as udhcpc reported it, plus the interface's MAC address."""

    interface: str
    ip: str
    netmask: str = ""
    prefix: int | None = None
    gateway: str = ""
    dns: tuple[str, ...] = ()
    hostname: str = ""
    domain: str = ""
    mac: str = ""

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}" if self.prefix is not None else ""

    @property
    def ipspec(self) -> str:
        """klibc's ``ip=`` value: ``client::gw:mask::iface:off[:dns0[:dns1]]``.

        ``off`` because the next kernel gets the whole lease and must not run its own
        DHCP; at most two resolvers fit the format.
        """
        return ":".join([self.ip, "", self.gateway, self.netmask, "", self.interface, "off",
                         *self.dns[:2]])  # fmt: skip


def parse_lease(text: str, *, mac: str = "", where: str = LEASE_FILE) -> Lease:
    """Read the script's ``key=value`` lines; ``ip`` and ``interface`` are required.

    udhcpc gives ``subnet`` (dotted) and ``mask`` (prefix length); either one is enough,
    the other is derived. ``router`` and ``dns`` are blank-separated lists.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LeaseError(f"line {number} is not key=value: {line!r}", where=where)
        values[key.strip()] = value.strip()
    for required in ("interface", "ip"):
        if not values.get(required):
            raise LeaseError(f"the lease has no {required}", where=where)
    ip = _address(values["ip"], "ip", where)
    netmask, prefix = _netmask(values.get("subnet", ""), values.get("mask", ""), where)
    routers = values.get("router", "").split()
    return Lease(
        interface=values["interface"],
        ip=ip,
        netmask=netmask,
        prefix=prefix,
        gateway=_address(routers[0], "router", where) if routers else "",
        dns=tuple(_address(d, "dns", where) for d in values.get("dns", "").split()),
        hostname=values.get("hostname", ""),
        domain=values.get("domain", ""),
        mac=mac.strip().lower(),
    )


def _address(text: str, key: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LeaseError(f"{key}={text!r} is not an IP address", where=where) from None


def _netmask(subnet: str, mask: str, where: str) -> tuple[str, int | None]:
    try:
        if subnet:
            net = ipaddress.IPv4Network(f"0.0.0.0/{subnet}")
        elif mask:
            net = ipaddress.IPv4Network(f"0.0.0.0/{int(mask)}")
        else:
            return "", None
    except ValueError:
        raise LeaseError(f"bad netmask subnet={subnet!r} mask={mask!r}", where=where) from None
    return str(net.netmask), net.prefixlen


def parse_servers(text: str | Iterable[str], *, where: str) -> tuple[str, ...]:
    """Resolver addresses from ``cloudboot.dns`` (``a,b`` or ``a;b``) or a plan list.

    A bad entry is an error naming its source: a silently dropped resolver is a boot
    that fails later with a confusing name lookup error.
    """
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    servers = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            servers.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise LeaseError(f"DNS server {item!r} is not an IP address", where=where) from None
    return tuple(servers)


def resolv_conf(servers: Iterable[str], *, search: str = "") -> str:
    """The text of ``/etc/resolv.conf`` for these resolvers."""
    lines = [f"search {search}"] if search else []
    lines += [f"nameserver {s}" for s in servers]
    return "".join(line + "\n" for line in lines)


def choose_dns(
    cmdline: str | None, plan_dns: Sequence[str], metadata: str | None
) -> tuple[tuple[str, ...], str] | None:
    """The resolvers to use and their source; later wins, as upstream: plan < cmdline <
    metadata (docs/wire-formats.md §5.1; the metadata document may set dns, see
    docs/trust-model.md).

    None when nobody asked for any: the DHCP lease's resolv.conf stays.
    """
    if metadata:
        return parse_servers(metadata, where="metadata cloudboot.dns"), "metadata"
    if cmdline:
        return parse_servers(cmdline, where="/proc/cmdline cloudboot.dns"), "cmdline"
    if plan_dns:
        return parse_servers(plan_dns, where="plan dns"), "plan"
    return None
