"""The agent's trust decisions: plan signature, freshness, and what binds the artifacts.

docs/trust-model.md is the rule; this module applies it with the policy of the boot
(``cloudboot.cosign``: enforce refuses, warn boots and says so, off checks nothing) and
says on the console what was verified and by what. Imported only by boots that fetch a
plan or an artifact from a registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from guest.agent import fetch, floor, pulls, stage
from guest.agent.background import Background
from guest.agent.cmdline import CosignPolicy, Options
from guest.agent.console import Console
from guest.agent.machine import Paths, System
from guest.contract import cosign, oci
from guest.contract.errors import CloudbootError

ROLLBACK_KNOB = "cloudboot.rollback"


def public_key(options: Options, path: Path) -> cosign.PublicKey | None:
    """The image's key; under enforce a missing one is fatal (fail closed)."""
    if not path.exists():
        if options.cosign is CosignPolicy.ENFORCE:
            raise cosign.SigningError(
                f"cloudboot.cosign=enforce but the image has no public key ({path}):"
                " nothing could be verified",
                where=str(path),
            )
        return None
    return cosign.load_public_key(path.read_bytes())


def verify_plan(
    console: Console,
    options: Options,
    key_path: Path,
    client: fetch.RegistryClient,
    ref: oci.Ref,
    digest: str,
) -> cosign.SignedPayload | None:
    """The plan's verified signature payload, or None when unchecked (warn/off)."""
    policy = options.cosign
    if policy is CosignPolicy.OFF:
        console.warn("cloudboot.cosign=off: plan signature not checked")
        return None
    key = public_key(options, key_path)
    if key is None:
        console.warn(f"no {key_path} in the image: plan signature not checked")
        return None
    try:
        signed = pulls.verify_signature(client, ref, digest, key)
    except cosign.SigningError as exc:
        if policy is CosignPolicy.ENFORCE:
            raise cosign.SigningError(
                f"plan signature check failed: {exc}", where=str(ref)
            ) from None
        console.warn(f"plan signature check failed (cloudboot.cosign=warn): {exc}")
        return None
    version = signed.version
    console.log(
        f"plan signature verified ({key.algorithm}); version {version or '-'},"
        f" {len(signed.pins)} pinned artifact(s)"
    )
    return signed


def read_floors(system: System, paths: Paths) -> tuple[dict[str, int], str | None]:
    """The freshness floor (guest/agent/floor.py) as the cache ESP holds it, and why it
    could not be read, for the caller to warn (this may run on another thread)."""
    try:
        system.ensure_efivars(paths.efivars)
        esp, _ = stage.choose_cache_esp(paths.sys, paths.dev, paths.efivars)
        with system.open_esp(esp) as files:
            stage.require_marker(files)
            return floor.parse(files.read(floor.FLOOR_PATH, floor.MAX_FLOOR_BYTES)), None
    except CloudbootError as exc:  # no cache disk: staging will say so
        return {}, f"freshness floor not read: {exc}"


class Floors:
    """The freshness floor, read once per boot.

    Reading it mounts the cache ESP (~0.1 s under TCG). A boot that will check a plan
    signature starts that read ahead, on the other CPU, while this one imports the
    registry client and fetches the plan (``read_ahead``); ``load`` waits for it, or
    reads now. The write step loads it before it mounts the ESP again.
    """

    def __init__(self, system: System, paths: Paths) -> None:
        self.system = system
        self.paths = paths
        self.value: dict[str, int] | None = None
        self.ahead: Background[tuple[dict[str, int], str | None]] | None = None

    def read_ahead(self) -> None:
        self.ahead = Background(lambda: read_floors(self.system, self.paths))

    def load(self, console: Console) -> dict[str, int]:
        if self.value is None:
            if self.ahead is not None:
                floors, warning = self.ahead.wait()
            else:
                floors, warning = read_floors(self.system, self.paths)
            if warning:
                console.warn(warning)
            self.value = floors
        return self.value


def floor_key(ref: oci.Ref) -> str | None:
    """Which floor a plan ref counts against: its tag (a digest ref cannot be moved)."""
    return None if ref.digest else str(ref)


def check_fresh(
    console: Console,
    options: Options,
    floors: Mapping[str, int],
    ref: oci.Ref,
    signed: cosign.SignedPayload,
) -> int | None:
    """The version to record as the new floor for ``ref``, after the rollback rule.

    Below the floor: enforce refuses (a tag moved back to an older signed plan) unless
    the baked command line says ``cloudboot.rollback=1``, which is logged and lowers the
    floor; warn boots and says so, leaving the floor alone.
    """
    key = floor_key(ref)
    if key is None:
        return None
    result = floor.check(floors, key, signed.version)
    if not result.stale:
        return result.version
    what = (
        f"plan {ref} version {result.version} is older than one already accepted ({result.floor})"
    )
    if options.rollback:
        console.warn(f"ROLLBACK: {what}; accepted because {ROLLBACK_KNOB}=1")
        return result.version
    if options.cosign is CosignPolicy.ENFORCE:
        raise cosign.SigningError(
            f"{what}: refusing a rollback (boot once with {ROLLBACK_KNOB}=1, or publish"
            " the old plan again so it is signed anew)",
            where=str(ref),
        )
    console.warn(f"{what} (cloudboot.cosign=warn: booting it anyway)")
    return None


def bind_artifacts(
    console: Console,
    options: Options,
    key_path: Path,
    client: fetch.RegistryClient,
    refs: list[oci.Ref],
    signed: cosign.SignedPayload | None,
) -> list[oci.Ref]:
    """Each artifact ref as it must be fetched (by a digest the key vouches for)."""
    if options.cosign is CosignPolicy.OFF:
        return refs
    trust = pulls.ArtifactTrust(
        signed.pins if signed else {},
        public_key(options, key_path),
        options.cosign is CosignPolicy.ENFORCE,
    )
    out = []
    for ref in refs:
        bound = pulls.bind_artifact(client, ref, trust)
        line = f"artifact {ref}: {bound.how}"
        if bound.verified:
            console.log(line)
        else:
            console.warn(f"{line} (cloudboot.cosign=warn: booting it anyway)")
        out.append(bound.ref)
    return out
