"""cloud-boot-init for Path C: the guest agent that runs as PID 1 in our initramfs
(docs/wire-formats.md §5).

One pass: cmdline -> network -> metadata -> plan (OCI or embedded) -> signature -> target
-> kernel and initrd -> cmdline template -> cache ESP -> Boot0001/BootOrder -> reboot.
Everything that touches the machine (mounts, modules, DHCP, the ESP mount, reboot) is
behind ``System`` so the same loop runs on the host against a directory tree and disk
images; ``guest.agent.sysguest`` is the real one.
Any failure before the NVRAM write prints ``FATAL:`` with a hint, leaves NVRAM untouched
and waits (PID 1 must never exit).

Python's start-up is a large part of a boot under TCG, so the modules only some boots
need (OCI pulls and cosign, the menu, the ext4 reader, the metadata document) are
imported where they are used, and the network comes up only when something needs it.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guest.agent import stage, staging, template
from guest.agent.cmdline import Options, knob_warnings, parse_cmdline, parse_exit
from guest.agent.console import Console
from guest.agent.hints import DEBUG_HINT, hint_for
from guest.agent.kexec import Kexec, Leaving, Preloaded, Staged, leave
from guest.agent.layers import Extras
from guest.agent.lease import Lease, choose_dns, resolv_conf
from guest.agent.machine import Paths, System
from guest.contract import plan
from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic

if TYPE_CHECKING:  # imported when used: a boot that never needs them never pays for them
    from guest.agent import fetch, lldp, sysguest, trust
    from guest.agent.disks.mounted import Mounter
    from guest.agent.metadata import Metadata
    from guest.contract import cosign, oci


@dataclass(frozen=True)
class Fetched:
    """A plan's text and where it came from (an OCI ref, or a file for plan=file:)."""

    text: str
    source: str  # ref or file, for PlanError locations
    ref: oci.Ref | None


class Agent:
    def __init__(
        self,
        system: System,
        console: Console,
        paths: Paths,
        arch: Arch,
        client_factory: Callable[[Options], fetch.RegistryClient] | None = None,
        mounter: Mounter | None = None,
    ) -> None:
        self.system = system
        self.console = console
        self.paths = paths
        self.arch = arch
        self.options = Options()
        self.params: dict[str, str] = {}  # the kernel command line's, before metadata
        self.client_factory = client_factory or self._default_client
        self.mounter = mounter  # xfs/btrfs mounts; None = the guest's mount(2)
        self._client: fetch.RegistryClient | None = None
        self.metadata_overrides: dict[str, str] = {}
        self.lease: Lease | None = None
        self.lldp: lldp.Listener | None = None
        self.network_done = False
        self.dns_written: tuple[str, ...] = ()
        self.signed: cosign.SignedPayload | None = None  # the chosen plan's signature
        self.accepted: dict[str, int] = {}  # plan ref -> version, for the freshness floor
        self.floors: trust.Floors | None = None  # read once, when a signature is checked
        self.staged: Staged | None = None  # what Boot0001 boots, for cloudboot.exit=kexec
        #: Called with what Boot0001 will boot before the writes; main() starts kexec's
        #: load there and the edge it returns is kept in ``exit_edge``.
        self.preload_exit: Callable[[Staged], Leaving | None] | None = None
        self.exit_edge: Leaving | None = None

    # -- the pass ------------------------------------------------------------------------

    def run(self) -> int:
        """Returns 0 after staging (the caller reboots), 1 after a FATAL (the caller waits)."""
        try:
            self._run()
        except CloudbootError as exc:
            self.console.fatal(str(exc), hint_for(exc))
            return 1
        except Exception as exc:  # PID 1: a bug must still end in a FATAL line, not a panic
            self.console.fatal(f"internal error: {type(exc).__name__}: {exc}", DEBUG_HINT)
            return 1
        return 0

    def _run(self) -> None:
        c = self.console
        with c.step("init"):
            self.system.prepare()
            self.params = parse_cmdline(self.paths.cmdline.read_text())
            self.options = Options.from_params(self.params)
            c.quiet = self.options.quiet
            for warning in knob_warnings(self.options):
                c.warn(warning)
            failed = self.system.load_modules(self.paths.modules)
            for name in failed:
                c.warn(f"module {name} did not load")
        c.log(f"cloud-boot-init (python) arch={self.arch.oci} plan={self.options.plan or '-'}")
        uptime = self.paths.root / "proc/uptime"
        if uptime.exists():
            since = float(uptime.read_text().split()[0]) - sum(c.timings.values())
            c.log(f"python ready at {since:.2f}s since kernel start")
        if self.options.plan.startswith("oci://") and self.paths.cosign_pub.exists():
            self._floors().read_ahead()  # it will check a signature: mount the ESP now
        meta = self._metadata()
        self._apply_dns(())
        target = self._choose(meta)
        c.log(f"target {target.name!r} ({target.source.kind})")
        with c.step("read"):
            kernel, initrd, artifact_cmdline, extras, content_of = self._materialise(target)
            # As upstream, the baked cloudboot.cmdline replaces the plan's; the metadata
            # document may not set it (docs/trust-model.md): options hold only the baked one.
            cmdline = self._render_cmdline(
                target, self.options.cmdline or target.cmdline or artifact_cmdline or "", extras
            )
            staged = Staged(kernel, initrd, extras.cmdline(cmdline))
            if self.preload_exit is not None:  # cloudboot.exit=kexec: kexec(8) loads the
                self.exit_edge = self.preload_exit(staged)  # target beside the hash, writes
            content = content_of()
        with c.step("write"):
            floor_doc = None
            if self.floors is not None:  # read before the ESP is mounted again
                floors = self.floors.load(c)
                if self.accepted:
                    from guest.agent import floor

                    floor_doc = floor.dump(floor.advanced(floors, self.accepted))
            esp = staging.write_esp(
                self.system, c, self.paths, target.name, staged, content, floor_doc
            )
        with c.step("nvram"):
            staging.write_nvram(self.system, self.paths, target.name, esp, staged)
        self.staged = staged
        c.log(
            f"Boot0001 = cloud-boot {target.name}; rebooting (total {sum(c.timings.values()):.3f}s)"
        )

    def _default_client(self, options: Options) -> fetch.RegistryClient:
        from guest.agent import registryconf

        return registryconf.client_for(options, self.paths, self._resolvers, self.console.warn)

    def _resolvers(self) -> tuple[str, ...]:
        """The resolvers this boot chose (cmdline < plan < metadata), else the lease's."""
        self._network()
        return self.dns_written or (self.lease.dns if self.lease else ())

    def client(self) -> fetch.RegistryClient:
        if self._client is None:
            self._client = self.client_factory(self.options)
        return self._client

    def _network(self) -> None:
        """DHCP once, the first time anything needs the network (plan, metadata, OCI)."""
        if self.network_done:
            return
        with self.console.step("network"):
            self.lease = self.system.network_up(self.console)
        self.network_done = True
        if self.dns_written:  # DHCP's script rewrote resolv.conf meanwhile: ours win
            write_atomic(self.paths.resolv_conf, resolv_conf(self.dns_written).encode())
        if self.lease:
            self.console.log(
                f"lease {self.lease.cidr or self.lease.ip} on {self.lease.interface}"
                f" gw {self.lease.gateway or '-'} dns {','.join(self.lease.dns) or '-'}"
            )
            start = self.system.start_lldp(self.lease.interface, self.options, self.arch.oci)
            self.lldp, notes = start
            for note in notes:
                self.console.log(note)

    # -- metadata and DNS ----------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        """Fetch the metadata document: its JSON is ``meta.*``, its ``cloudboot`` object
        overrides knobs. Like upstream, a document that cannot be had is a warning and
        the boot goes on with the command line's values."""
        url = self.options.metadata_url
        if not url:
            return {}
        self._network()
        from guest.agent import httpclient, keystone, metadata

        try:
            with self.console.step("metadata"):
                token = keystone.metadata_token(self.params, self.paths, self.console.log)
                data = metadata.fetch_document(url, token)
                shown = httpclient.redact_url(url)
                doc = metadata.parse_metadata(data, self.params, where=shown)
        except CloudbootError as exc:
            self.console.warn(f"metadata: {exc}; going on with the command line's values")
            return {}
        self._apply_metadata(doc)
        return dict(doc.document)

    def _apply_metadata(self, doc: Metadata) -> None:
        from guest.agent import metadata

        metadata.report(doc, self.params, self.console)
        self.metadata_overrides = dict(doc.overrides)
        self.options = Options.from_params(metadata.apply(self.params, doc))
        self._client = None  # knobs such as the registry client's may have changed

    def _apply_dns(self, plan_dns: tuple[str, ...]) -> None:
        """/etc/resolv.conf by precedence plan < cmdline < metadata (docs/wire-formats.md §5.1).

        Called before the plan fetch (command line or metadata resolvers, so the plan's
        registry can be named) and again after the outermost plan is parsed.
        """
        chosen = choose_dns(
            self.params.get("cloudboot.dns"), plan_dns, self.metadata_overrides.get("cloudboot.dns")
        )
        if chosen is None:
            return
        servers, source = chosen
        if servers == self.dns_written:
            return
        write_atomic(self.paths.resolv_conf, resolv_conf(servers).encode())
        self.dns_written = servers
        self.console.log(f"dns {','.join(servers)} (from {source}) -> /etc/resolv.conf")

    def _render_cmdline(self, target: plan.Target, cmdline: str, extras: Extras) -> str:
        """Go-template text (``ip={{.IPSpec}}``) filled in from what this guest knows."""
        if not template.has_template(cmdline):
            return cmdline
        if self.lease is None and not self.network_done:
            self._network()  # the template may want the lease; DHCP now rather than fail
        fields = template.target_fields(self.lease, target.source, insecure=self.options.insecure)
        if extras.modloop_url:
            fields["ModloopURL"] = extras.modloop_url
        rendered = template.render(cmdline, fields, where=f"{target.where} cmdline")
        self.console.log(f"cmdline rendered: {rendered}")
        return rendered

    def _render_plan_ref(self, text_ref: str) -> str:
        """``oci://{{.Gateway}}:5000/...`` filled in from the lease (template.plan_ref)."""
        rendered = template.plan_ref(text_ref, self.lease)
        if rendered != text_ref:
            self.console.log(f"cloudboot.plan rendered: {rendered}")
        return rendered

    def _fetch_plan(self, text_ref: str) -> Fetched:
        c = self.console
        if not text_ref:
            if not self.paths.embedded_plan.exists():
                raise CloudbootError(
                    "no cloudboot.plan on the command line and no embedded plan",
                    where=str(self.paths.embedded_plan),
                )
            c.log("using the embedded plan /etc/cloud-boot/plan.hcl")
            return self._embedded_plan()
        from guest.agent import fetch, pulls
        from guest.contract import oci

        self._network()
        ref = oci.parse_ref(self._render_plan_ref(text_ref))
        client = self.client()
        with c.step("fetch"):
            try:
                resolved, data = pulls.pull_plan(client, ref, self.arch.oci)
            except fetch.FetchError as exc:
                if not self.paths.embedded_plan.exists():
                    raise
                c.warn(f"{exc}; falling back to the embedded plan")
                return self._embedded_plan()
        c.log(f"plan {ref} {resolved.top_digest}")
        with c.step("verify"):
            self._verify(client, ref, resolved.top_digest)
        return Fetched(plan.plan_text(data, str(ref)), str(ref), ref)

    def _embedded_plan(self) -> Fetched:
        self.signed = None  # baked into the image: no signature, no pins
        source = "/etc/cloud-boot/plan.hcl"
        data = plan.read_plan_bytes(self.paths.embedded_plan)
        return Fetched(plan.plan_text(data, source), source, None)

    def _verify(self, client: fetch.RegistryClient, ref: oci.Ref, digest: str) -> None:
        """Plan signature, then freshness against the floor on the cache ESP."""
        from guest.agent import trust

        c = self.console
        self.signed = trust.verify_plan(c, self.options, self.paths.cosign_pub, client, ref, digest)
        if self.signed is None:
            return
        floors = self._floors().load(c)
        version = trust.check_fresh(c, self.options, floors, ref, self.signed)
        key = trust.floor_key(ref)
        if version is not None and key is not None:
            self.accepted[key] = version

    def _floors(self) -> trust.Floors:
        from guest.agent import trust

        if self.floors is None:
            self.floors = trust.Floors(self.system, self.paths)
        return self.floors

    def _choose(self, meta: dict[str, Any]) -> plan.Target:
        if self.options.raw.get("cloudboot.disk"):  # upstream's disk mode: no network, no plan
            from guest.agent.disks.cmdline import disk_target

            return disk_target(self.options.raw, self.console)
        text_ref = self.options.plan
        if self.options.image and not text_ref and not self.paths.embedded_plan.exists():
            return _cmdline_target("legacy-image", plan.OciSource(index=self.options.image))
        wanted: str | None = self.options.target or None
        for depth in range(plan.MAX_SUBPLAN_DEPTH):  # at most 8 plans decoded, as upstream
            fetched = self._fetch_plan(text_ref)
            lldp_facts = self._lldp(uses_lldp="lldp." in fetched.text)
            with self.console.step("parse"):
                parsed = plan.parse_plan(fetched.text, fetched.source)
                evaluated = plan.evaluate(parsed, self.arch.oci, meta=meta, lldp=lldp_facts)
            if depth == 0:  # like upstream: the outermost plan's resolvers
                self._apply_dns(evaluated.dns)
            name = wanted or self._menu(evaluated)
            target = plan.select_target(evaluated, name)
            if not isinstance(target.source, plan.SubplanSource):
                return target
            if depth == plan.MAX_SUBPLAN_DEPTH - 1:
                break
            self.console.log(f"target {target.name!r} chains to subplan {target.source.ref}")
            text_ref, wanted = target.source.ref, None
        raise CloudbootError(
            f"subplan chain longer than {plan.MAX_SUBPLAN_DEPTH} plans", where=text_ref
        )

    def _lldp(self, uses_lldp: bool) -> plan.Lldp:
        """The neighbour facts for the plan (lldp.Listener.facts_for); none without a listen."""
        if self.lldp is None:
            return plan.Lldp()
        return self.lldp.facts_for(self.console, uses_lldp=uses_lldp)

    def _menu(self, evaluated: plan.EvaluatedPlan) -> str | None:
        wants_menu = self.options.menu if self.options.menu is not None else bool(evaluated.menu)
        fds = self.system.console_fds()
        if not wants_menu or not fds:
            return None
        from guest.agent import menu

        return menu.run_menu(self.console, fds, evaluated, self.options)

    # -- sources -------------------------------------------------------------------------

    def _materialise(
        self, target: plan.Target
    ) -> tuple[stage.FileData, stage.FileData | None, str | None, Extras, Callable[[], str | None]]:
        """Kernel, initrd, the artifact's cmdline, its extras, and what the stamp of the
        staged files records (stage.write_files): the layers' digests for an OCI target,
        the files' own hashes for a disk target. The stamp comes as a call: hashing a
        disk target's files takes a while under TCG, and kexec(8) can start before it."""
        source = target.source
        if isinstance(source, plan.DiskSource):
            from guest.agent.disks import discover

            files = discover.read_disk(source, self.paths, self.console, self.mounter)
            hashed = lambda: stage.disk_content(files.kernel, files.initrd)  # noqa: E731
            return files.kernel, files.initrd, None, Extras(), hashed
        if isinstance(source, plan.OciSource):
            from guest.agent import pulls, trust
            from guest.contract import oci

            self._network()
            named = [
                oci.parse_ref(r)
                for r in (source.index, source.kernel, source.initrd, source.modules)
                if r
            ]
            refs = trust.bind_artifacts(
                self.console, self.options, self.paths.cosign_pub, self.client(), named, self.signed
            )
            boot = pulls.pull_boot(self.client(), refs, self.arch.oci)
            return boot.kernel, boot.initrd or None, boot.cmdline, boot.extras, lambda: boot.content
        raise CloudbootError(f"unsupported source {source.kind}", where=str(target.where))


def _cmdline_target(name: str, source: plan.Source, cmdline: str | None = None) -> plan.Target:
    """A target the command line names without a plan (docs/knobs.md): ``cloudboot.image``
    (upstream's one-target plan ``legacy-image``, used when there is neither
    ``cloudboot.plan`` nor an embedded plan). ``cloudboot.disk`` is guest.agent.disks.cmdline."""
    from guest.contract.errors import Location

    where = Location("cloudboot.image on /proc/cmdline")
    return plan.Target(name, name, "", "", cmdline or "", source, where)


def main(system: sysguest.GuestSystem | None = None) -> None:
    """PID 1 entry point: run once, reboot on success, otherwise wait (never exit).

    The entry script passes the system it started early (``GuestSystem.start_early``).
    """
    from guest.agent import sysguest

    system = system or sysguest.GuestSystem()
    console = Console(system.console_streams())
    agent = Agent(system, console, Paths(), Arch.host())

    def preload(staged: Staged) -> Leaving | None:
        if parse_exit(agent.options.exit)[0] != "kexec":
            return None
        system.ensure_efivars(agent.paths.efivars)  # for_guest reads SecureBoot
        return Preloaded(Kexec.for_guest(agent.arch, system.finish, agent.paths.efivars), staged)

    agent.preload_exit = preload
    status = agent.run()
    if status == 0:  # reboot(2), or kexec as cloudboot.exit says
        edge = agent.exit_edge or Kexec.for_guest(agent.arch, system.finish, agent.paths.efivars)
        status = leave(console, agent.options.exit, agent.staged, edge)
    gc.enable()  # the guest's entry script turned it off for the pass (guestpack._ENTRY)
    system.wait_forever(agent.options.debug)
    sys.exit(status)  # unreachable in the guest; kept for host runs


if __name__ == "__main__":
    main()
