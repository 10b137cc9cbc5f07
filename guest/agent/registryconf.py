"""The guest's registry client as this boot's knobs and baked files configure it.

Kept apart from ``guest.agent.fetch`` so the agent's start-up imports only this small
module's names: ``fetch``, ``srv`` and ``ssl`` are imported when a client is built.

- ``rd.cloudboot.user`` / ``rd.cloudboot.pass`` (upstream's names): credentials that
  answer a Basic or token-service challenge from any registry, as upstream's do. They are
  sent only when a registry asks, never shown (``Credentials.__repr__``, no log line).
- ``REGISTRY_CA`` (the recipe's ``[registry] ca``, baked into the UKI's initramfs): the
  certificates HTTPS registries are checked against, besides any default ones.
- ``_oci._tcp.<domain>`` refs resolve through the resolvers the agent chose (``resolvers``:
  ``cloudboot.dns``, the plan's, the metadata's, else the DHCP lease's), not re-read from
  ``/etc/resolv.conf``, which the DHCP client's script may rewrite behind our back;
  ``cloudboot.dns.port`` (ours) points the agent's own DNS queries at another port, for
  a lab resolver that cannot take port 53.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from guest.agent.cmdline import CmdlineError, Options
from guest.agent.machine import Paths

if TYPE_CHECKING:
    import ssl

    from guest.agent import fetch

#: Where the baked private CA lives in the initramfs (publisher.media.initramfs writes it).
REGISTRY_CA = "/etc/cloudboot/registry-ca.pem"
DNS_PORT_KEY = "cloudboot.dns.port"


def dns_port(options: Options) -> int:
    text = options.raw.get(DNS_PORT_KEY, "53")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise CmdlineError(
            f"{DNS_PORT_KEY}={text!r}: expected a port 1-65535", where="/proc/cmdline"
        )
    return int(text)


def ssl_context(paths: Paths) -> ssl.SSLContext | None:
    """The default context plus the baked CA; None (the default) when nothing is baked."""
    ca = paths.root / REGISTRY_CA.lstrip("/")
    if not ca.is_file():
        return None
    import ssl

    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca))
    return context


def client_for(
    options: Options,
    paths: Paths,
    resolvers: Callable[[], Sequence[str]],
    warn: Callable[[str], None] | None = None,
) -> fetch.RegistryClient:
    from guest.agent import fetch, srv

    port = dns_port(options)
    creds = None
    if options.registry_user or options.registry_password:
        creds = fetch.Credentials(options.registry_user, options.registry_password)
    resolver = srv.Resolver(lambda: [(server, port) for server in resolvers()])
    return fetch.RegistryClient(
        insecure=options.insecure,
        default_credentials=creds,
        ssl_context=ssl_context(paths),
        srv=resolver,
        warn=warn,
    )
