"""Static IPv4 from ``ip=`` on the kernel command line, as klibc's ipconfig reads it
(docs/knobs.md, "ip=").

``ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>``;
fields may be empty and trailing ones left out. Upstream's guest takes any ``ip=`` as
static and reads client, gateway and netmask; we also honour the device, the hostname
and the two resolvers, and read the keywords as klibc does: ``dhcp``/``on``/``any``/
``bootp``/``both`` (alone, or as the autoconf field with no client) mean DHCP; ``off``/
``none`` mean no autoconfiguration, which a guest that must reach a registry cannot do
without a client address, so that is an error naming the key.

Pure: the parsed value becomes the variables busybox udhcpc hands its script, so the one
script (publisher.media.guestpack) configures the link, the route and resolv.conf and
writes the lease file for a static address exactly as it does for a DHCP lease.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from guest.contract.errors import CloudbootError

DHCP_WORDS = frozenset({"dhcp", "on", "any", "bootp", "both", "rarp", "dhcp6", "auto6"})
OFF_WORDS = frozenset({"off", "none", "static", ""})
WHERE = "ip= on the kernel command line"


class IpConfigError(CloudbootError):
    pass


@dataclass(frozen=True)
class StaticIp:
    """One interface's static IPv4 configuration (``device`` empty: the first NIC)."""

    client: str
    netmask: str
    prefix: int
    gateway: str = ""
    hostname: str = ""
    device: str = ""
    dns: tuple[str, ...] = ()

    def script_env(self, interface: str) -> dict[str, str]:
        """What udhcpc would export for this address (``mask`` is the prefix length)."""
        return {
            "interface": interface,
            "ip": self.client,
            "subnet": self.netmask,
            "mask": str(self.prefix),
            "router": self.gateway,
            "dns": " ".join(self.dns),
            "hostname": self.hostname,
            "domain": "",
            "broadcast": "",
        }


@dataclass(frozen=True)
class Dhcp:
    """DHCP, on ``device`` when ``ip=`` named one (empty: the first NIC)."""

    device: str = ""


def _v4(text: str, field: str, spec: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise IpConfigError(
            f"ip={spec}: {field} {text!r} is not an IPv4 address", where=WHERE
        ) from None


def parse_ip(spec: str | None) -> StaticIp | Dhcp | None:
    """``None`` without ``ip=``; else DHCP or a static address (errors name the field)."""
    if spec is None:
        return None
    if spec.lower() in DHCP_WORDS:
        return Dhcp()
    fields = (spec.split(":") + [""] * 9)[:9]
    client, _server, gateway, netmask, hostname, device, autoconf, dns0, dns1 = fields
    if spec.lower() in OFF_WORDS or (not client and autoconf.lower() in OFF_WORDS):
        raise IpConfigError(
            f"ip={spec}: no address and no autoconfiguration; this guest needs the network "
            "(give ip=<client>::<gw>:<netmask>, or ip=dhcp)",
            where=WHERE,
        )
    if autoconf.lower() in DHCP_WORDS:
        if client:
            raise IpConfigError(
                f"ip={spec}: a client address with autoconf {autoconf!r}: pick one", where=WHERE
            )
        return Dhcp(device)
    if autoconf.lower() not in OFF_WORDS:
        raise IpConfigError(f"ip={spec}: unknown autoconf {autoconf!r}", where=WHERE)
    address = _v4(client, "client", spec)
    if not netmask:
        raise IpConfigError(f"ip={spec}: a static address needs a netmask", where=WHERE)
    try:
        network = ipaddress.IPv4Network(f"0.0.0.0/{_v4(netmask, 'netmask', spec)}")
    except ValueError:
        raise IpConfigError(
            f"ip={spec}: netmask {netmask!r} is not a netmask", where=WHERE
        ) from None
    return StaticIp(
        client=address,
        netmask=str(network.netmask),
        prefix=network.prefixlen,
        gateway=_v4(gateway, "gateway", spec) if gateway else "",
        hostname=hostname,
        device=device,
        dns=tuple(_v4(d, "dns", spec) for d in (dns0, dns1) if d),
    )
