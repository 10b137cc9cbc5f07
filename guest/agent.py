"""cloud-boot-init for Path C: the guest agent that runs as PID 1 in our initramfs (spec 5).

One pass: cmdline -> network -> plan (OCI or embedded) -> signature -> target -> kernel and
initrd -> cache ESP -> Boot0001/BootOrder -> reboot. Everything that touches the machine
(mounts, modules, DHCP, the ESP mount, reboot) is behind ``System`` so the same loop runs
on the host against a directory tree and disk images; ``guest.sysguest`` is the real one.
Any failure before the NVRAM write prints ``FATAL:`` with a hint, leaves NVRAM untouched
and waits (PID 1 must never exit).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from guest import blockdev, cosign, fetch, menu, oci, plan, stage
from guest.arch import Arch
from guest.cmdline import CosignPolicy, Options
from guest.console import Console
from guest.diskread import Ext4Reader, read_boot_files
from guest.efi.efivarfs import EfiVarStore
from guest.errors import CloudbootError

DEBUG_HINT = "cloudboot.debug=1 on the kernel command line gives a shell on the console"


@dataclass(frozen=True)
class Paths:
    """Where the agent finds things; ``root`` is ``/`` in the guest, a tmp dir in tests."""

    root: Path = Path("/")

    @property
    def cmdline(self) -> Path:
        return self.root / "proc/cmdline"

    @property
    def cosign_pub(self) -> Path:
        return self.root / "etc/cosign.pub"

    @property
    def embedded_plan(self) -> Path:
        return self.root / "etc/cloud-boot/plan.hcl"

    @property
    def modules(self) -> Path:
        return self.root / "etc/cloudboot/modules"  # written by publisher.media.initramfs

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def efivars(self) -> Path:
        return self.root / "sys/firmware/efi/efivars"


class System(Protocol):
    def prepare(self) -> None: ...
    def load_modules(self, listing: Path) -> list[str]: ...
    def ensure_efivars(self, path: Path) -> None: ...
    def network_up(self, console: Console) -> None: ...
    def open_esp(self, esp: stage.CacheEsp) -> AbstractContextManager[stage.EspFiles]: ...
    def finish(self) -> None: ...
    def wait_forever(self, debug: bool) -> None: ...
    def console_fds(self) -> list[int]: ...


@dataclass(frozen=True)
class Fetched:
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
    ) -> None:
        self.system = system
        self.console = console
        self.paths = paths
        self.arch = arch
        self.options = Options()
        self.client_factory = client_factory or (
            lambda o: fetch.RegistryClient(insecure=o.insecure)
        )
        self.nvram_touched = False

    # -- the pass ------------------------------------------------------------------------

    def run(self) -> int:
        """Returns 0 after staging (the caller reboots), 1 after a FATAL (the caller waits)."""
        try:
            self._run()
        except CloudbootError as exc:
            self.console.fatal(str(exc), _hint(exc))
            return 1
        except Exception as exc:  # PID 1: a bug must still end in a FATAL line, not a panic
            self.console.fatal(f"internal error: {type(exc).__name__}: {exc}", DEBUG_HINT)
            return 1
        return 0

    def _run(self) -> None:
        c = self.console
        with c.step("init"):
            self.system.prepare()
            self.options = Options.from_text(self.paths.cmdline.read_text())
            c.quiet = self.options.quiet
            failed = self.system.load_modules(self.paths.modules)
            for name in failed:
                c.warn(f"module {name} did not load")
        c.log(f"cloud-boot-init (python) arch={self.arch.oci} plan={self.options.plan or '-'}")
        uptime = self.paths.root / "proc/uptime"
        if uptime.exists():
            since = float(uptime.read_text().split()[0]) - sum(c.timings.values())
            c.log(f"python ready at {since:.2f}s since kernel start")
        client = self.client_factory(self.options)
        if self.options.plan or self.options.metadata_url:
            with c.step("network"):
                self.system.network_up(c)
        meta = self._metadata()
        evaluated, target = self._choose(client, meta)
        c.log(f"target {target.name!r} ({target.source.kind})")
        with c.step("read"):
            kernel, initrd, artifact_cmdline = self._materialise(client, target)
        cmdline = target.cmdline or artifact_cmdline or (self.options.cmdline or "")
        with c.step("write"):
            esp, warnings = stage.find_cache_esp(blockdev.scan(self.paths.sys, self.paths.dev))
            for warning in warnings:
                c.warn(warning)
            with self.system.open_esp(esp) as files:
                stage.write_files(files, target.name, kernel, initrd)
            c.log(f"staged {len(kernel)} + {len(initrd or b'')} bytes on {esp.device.name}")
        with c.step("nvram"):
            self.system.ensure_efivars(self.paths.efivars)
            self.nvram_touched = True
            stage.write_boot_entry(
                EfiVarStore(self.paths.efivars),
                target.name,
                esp,
                cmdline,
                has_initrd=initrd is not None,
            )
        c.log(
            f"Boot0001 = cloud-boot {target.name}; rebooting (total {sum(c.timings.values()):.3f}s)"
        )
        del evaluated

    # -- plan ----------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        url = self.options.metadata_url
        if not url:
            return {}
        with self.console.step("metadata"):
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    doc = json.loads(resp.read(1 << 20))
            except (OSError, ValueError) as exc:
                raise CloudbootError(f"metadata document unreadable: {exc}", where=url) from None
        if not isinstance(doc, dict):
            raise CloudbootError("metadata document is not a JSON object", where=url)
        return doc

    def _fetch_plan(self, client: fetch.RegistryClient, text_ref: str) -> Fetched:
        c = self.console
        if not text_ref:
            if not self.paths.embedded_plan.exists():
                raise CloudbootError(
                    "no cloudboot.plan on the command line and no embedded plan",
                    where=str(self.paths.embedded_plan),
                )
            c.log("using the embedded plan /etc/cloud-boot/plan.hcl")
            return Fetched(self.paths.embedded_plan.read_text(), "/etc/cloud-boot/plan.hcl", None)
        ref = oci.parse_ref(text_ref)
        with c.step("fetch"):
            try:
                resolved, data = fetch.pull_plan(client, ref, self.arch.oci)
            except fetch.FetchError as exc:
                if not self.paths.embedded_plan.exists():
                    raise
                c.warn(f"{exc}; falling back to the embedded plan")
                return Fetched(
                    self.paths.embedded_plan.read_text(), "/etc/cloud-boot/plan.hcl", None
                )
        c.log(f"plan {ref} {resolved.top_digest}")
        with c.step("verify"):
            self._verify(client, ref, resolved.top_digest)
        return Fetched(data.decode("utf-8"), str(ref), ref)

    def _verify(self, client: fetch.RegistryClient, ref: oci.Ref, digest: str) -> None:
        policy = self.options.cosign
        if policy is CosignPolicy.OFF:
            self.console.warn("cloudboot.cosign=off: plan signature not checked")
            return
        if not self.paths.cosign_pub.exists():
            self.console.warn("no /etc/cosign.pub in the image: plan signature not checked")
            return
        key = cosign.load_public_key(self.paths.cosign_pub.read_bytes())
        try:
            fetch.verify_signature(client, ref, digest, key)
        except cosign.SigningError as exc:
            if policy is CosignPolicy.ENFORCE:
                raise cosign.SigningError(
                    f"plan signature check failed: {exc}", where=str(ref)
                ) from None
            self.console.warn(f"plan signature check failed (cloudboot.cosign=warn): {exc}")
            return
        self.console.log(f"plan signature verified ({key.algorithm})")

    def _choose(
        self, client: fetch.RegistryClient, meta: dict[str, Any]
    ) -> tuple[plan.EvaluatedPlan, plan.Target]:
        text_ref = self.options.plan
        wanted: str | None = self.options.target or None
        for depth in range(plan.MAX_SUBPLAN_DEPTH + 1):
            fetched = self._fetch_plan(client, text_ref)
            with self.console.step("parse"):
                parsed = plan.parse_plan(fetched.text, fetched.source)
                evaluated = plan.evaluate(parsed, self.arch.oci, meta=meta)
            name = wanted or self._menu(evaluated)
            target = plan.select_target(evaluated, name)
            if not isinstance(target.source, plan.SubplanSource):
                return evaluated, target
            if depth == plan.MAX_SUBPLAN_DEPTH:
                break
            self.console.log(f"target {target.name!r} chains to subplan {target.source.ref}")
            text_ref, wanted = target.source.ref, None
        raise CloudbootError(f"subplan chain deeper than {plan.MAX_SUBPLAN_DEPTH}", where=text_ref)

    def _menu(self, evaluated: plan.EvaluatedPlan) -> str | None:
        wants_menu = self.options.menu if self.options.menu is not None else bool(evaluated.menu)
        fds = self.system.console_fds()
        if not wants_menu or not fds:
            return None
        entries = [menu.Entry(t.name, t.label, t.version) for t in evaluated.eligible_targets()]
        default = evaluated.default_target or entries[0].name
        timeout = evaluated.menu.timeout_s if evaluated.menu else None
        if self.options.menu_timeout is not None:
            timeout = plan.parse_timeout(self.options.menu_timeout)
        prompt = self.options.menu_prompt or (
            evaluated.menu.prompt if evaluated.menu else plan.DEFAULT_MENU_PROMPT
        )
        while True:
            countdown = f" [{default} in {timeout:g}s]" if timeout is not None else ""
            self.console.write(menu.render(entries, default, prompt + countdown))
            answer = menu.ask(fds, timeout)
            if answer is None:
                self.console.write("\n")
                return default
            chosen = menu.choose(entries, default, answer)
            if chosen:
                return chosen
            self.console.write(f"no target matches {answer!r}\n")
            timeout = None

    # -- sources -------------------------------------------------------------------------

    def _materialise(
        self, client: fetch.RegistryClient, target: plan.Target
    ) -> tuple[bytes, bytes | None, str | None]:
        source = target.source
        if isinstance(source, plan.DiskSource):
            if source.fs != "ext4":
                raise CloudbootError(
                    f"fs {source.fs!r} is not readable by this guest (ext4 only)",
                    where=str(target.where),
                )
            devices = blockdev.scan(self.paths.sys, self.paths.dev)
            device = blockdev.resolve(source.device, devices)
            self.console.log(f"reading {source.device} ({device.name})")
            with Ext4Reader.open(device.node) as fs:
                files = read_boot_files(fs, source.kernel or "", source.initrd or "")
            self.console.log(f"kernel {files.kernel_path}, initrd {files.initrd_path or '-'}")
            return files.kernel, files.initrd, None
        if isinstance(source, plan.OciSource):
            refs = [
                oci.parse_ref(r)
                for r in (source.index, source.kernel, source.initrd, source.modules)
                if r
            ]
            boot = fetch.pull_boot(client, refs, self.arch.oci)
            return boot.kernel, boot.initrd or None, boot.cmdline
        raise CloudbootError(f"unsupported source {source.kind}", where=str(target.where))


def _default_client(options: Options) -> fetch.RegistryClient:
    return fetch.RegistryClient(insecure=options.insecure)


def _hint(exc: CloudbootError) -> str:
    if isinstance(exc, cosign.SigningError):
        return (
            "push the plan signed with the key baked into boot.iso (`cloudboot push`), "
            "or boot with cloudboot.cosign=warn; NVRAM was not touched"
        )
    if isinstance(exc, stage.StageError):
        return stage.CACHE_DISK_HINT
    if isinstance(exc, blockdev.DeviceNotFoundError):
        return "check the target's disk.device in the plan against the disks attached"
    if isinstance(exc, fetch.FetchError):
        return (
            "check the network, the registry address (the host is 10.0.2.2 under QEMU) "
            "and cloudboot.plan"
        )
    return DEBUG_HINT


def main() -> None:
    """PID 1 entry point: run once, reboot on success, otherwise wait (never exit)."""
    from guest import sysguest

    system = sysguest.GuestSystem()
    console = Console(system.console_streams())
    agent = Agent(system, console, Paths(), Arch.host())
    status = agent.run()
    if status == 0:
        system.finish()
    system.wait_forever(agent.options.debug)
    sys.exit(status)  # unreachable in the guest; kept for host runs


if __name__ == "__main__":
    main()
