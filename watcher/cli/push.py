"""`cloudboot push plan|artifact|index`: publish OCI artifacts (docs/wire-formats.md §2), signed.

Each command prints ``REF@sha256:...`` on stdout (or one JSON object with ``--json``), so
scripts can pin exactly what was published; progress and retries go to the log on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.arch import Arch, artifact_arch
from guest.contract.oci import parse_ref
from watcher.cli import state
from watcher.cli.errors import UsageError
from watcher.cli.registryflags import NO_FLAGS, RegistryFlags, registry_flags

if TYPE_CHECKING:  # requests, cryptography: imported by the commands that push
    from publisher.push import PushResult
    from publisher.signing import SigningKey

push_app = typer.Typer(
    rich_markup_mode=None, help="Publish plans, kernel artifacts and multi-arch indexes."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", "-k", help="Sign with this cosign key (password: $COSIGN_PASSWORD)."),
]
AnnotateOpt = Annotated[
    bool,
    typer.Option(
        "--git-annotations",
        help="Add org.opencontainers.image.revision/source (git) and created "
        "($SOURCE_DATE_EPOCH) to the manifest.",
    ),
]


def signing_key(path: Path | None) -> SigningKey | None:
    """Load a key; ask for the password only when the key is encrypted."""
    if path is None:
        return None
    from publisher.inputs import MAX_KEY_BYTES, check_small_file
    from publisher.signing import load_key_file

    check_small_file(path, MAX_KEY_BYTES, "private key")  # no FIFO, device or huge file
    return load_key_file(path)


def emit(result: PushResult, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        typer.echo(str(result))


def _workspace_ref(ctx: typer.Context, file: Path) -> str:
    """The plan's ref from cloudboot.toml, once no other plan claims the same ref."""
    from publisher.planrefs import check_plan_refs, plan_ref
    from publisher.workspace import find_plans

    config = state(ctx).config
    if config.plans_dir.is_dir():
        check_plan_refs(config, find_plans(config))
    return plan_ref(config, file)


@push_app.command("plan")
@registry_flags
def push_plan(
    ctx: typer.Context,
    ref: Annotated[
        str | None, typer.Argument(help="Target ref; default from cloudboot.toml.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="The plan (.hcl; - for stdin); default: the workspace's plans/default.hcl.",
        ),
    ] = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
    git_annotations: AnnotateOpt = False,
) -> None:
    """Validate a plan for every arch, then push it (and its signature, with --key)."""
    from publisher.annotations import source_annotations
    from publisher.push import publish_plan

    if ref is not None and not ref.strip():
        raise UsageError("empty REF: name a ref (host/repo:tag) or leave it out", where="REF")
    if file is None:
        file = state(ctx).config.plans_dir / "default.hcl"
    elif not str(file) or str(file) == ".":
        raise UsageError("empty plan path: name a plan file", where="--file")
    target = parse_ref(ref) if ref else parse_ref(_workspace_ref(ctx, file))
    signer = signing_key(key)
    annotations = source_annotations(file.resolve().parent) if git_annotations else None
    client = registry.client(ctx)
    upstream = state(ctx).settings.publish.upstream
    emit(publish_plan(client, target, file, signer, annotations, upstream=upstream), as_json)


@push_app.command("artifact")
@registry_flags
def push_artifact_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Target ref.")],
    platform: Annotated[
        str, typer.Option("--platform", help="linux/amd64 or linux/arm64.")
    ] = "linux/amd64",
    kernel: Annotated[Path, typer.Option("--kernel", help="Kernel image (vmlinuz).")] = Path(
        "vmlinuz"
    ),
    initrd: Annotated[Path | None, typer.Option("--initrd", help="initrd image.")] = None,
    modules: Annotated[Path | None, typer.Option("--modules", help="Modules cpio (gzip).")] = None,
    cmdline: Annotated[str | None, typer.Option("--cmdline", help="Kernel command line.")] = None,
    modloop: Annotated[
        Path | None, typer.Option("--modloop", help="Alpine modloop (squashfs).")
    ] = None,
    apkovl: Annotated[
        Path | None, typer.Option("--apkovl", help="Alpine apkovl overlay (tar.gz).")
    ] = None,
    squashfs: Annotated[
        Path | None, typer.Option("--squashfs", help="Live root filesystem (squashfs).")
    ] = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Push a kernel (+ initrd, modules, modloop, apkovl, squashfs, cmdline) artifact for
    one architecture (linux/amd64, linux/arm64 or linux/riscv64)."""
    from guest.contract.oci import LayerRole
    from publisher.inputs import check_regular
    from publisher.push import push_artifact

    arch = _platform_arch(platform, "--platform")
    given_files = {"kernel": kernel, "initrd": initrd, "modules": modules, "modloop": modloop,
                   "apkovl": apkovl, "squashfs": squashfs}  # fmt: skip
    for name, given in given_files.items():
        if given is not None:
            check_regular(given, name)
    extra_roles = (LayerRole.MODLOOP, LayerRole.APKOVL, LayerRole.SQUASHFS)
    extras = {r: p for r in extra_roles if (p := given_files[r.name.lower()]) is not None}
    target = parse_ref(ref)
    signer = signing_key(key)
    client = registry.client(ctx)
    result = push_artifact(
        client, target, arch, kernel, initrd, modules, cmdline, key=signer, extras=extras
    )
    emit(result, as_json)


def _platform_arch(text: str, option: str) -> str:
    """The OCI arch of ``linux/ARCH``; what is published may also be for an arch our guest
    does not boot (riscv64, for upstream's guest)."""
    os_name, _, arch = text.partition("/")
    if os_name != "linux" or not arch:
        raise typer.BadParameter(f"expected linux/ARCH, got {text!r}", param_hint=option)
    try:
        return artifact_arch(arch)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@push_app.command("index")
@registry_flags
def push_index_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Target ref of the index.")],
    platforms: Annotated[
        list[str],
        typer.Option("--platform", "-p", help="linux/ARCH=REF, once per architecture."),
    ],
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Push a multi-arch index over per-arch manifests (copied into REF's repository)."""
    from publisher.push import push_index

    entries = []
    for item in platforms:
        plat, sep, source = item.partition("=")
        if not sep or not source:
            raise typer.BadParameter(f"expected linux/ARCH=REF, got {item!r}", param_hint="-p")
        entries.append((_platform_arch(plat, "-p"), parse_ref(source)))
    target = parse_ref(ref)
    signer = signing_key(key)
    client = registry.client(ctx)
    emit(push_index(client, target, entries, signer), as_json)


@push_app.command("base")
@registry_flags
def push_base_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Target ref of the base index.")],
    arches: Annotated[
        list[str] | None,
        typer.Option("--arch", help="x86_64 / aarch64; repeat (default: both)."),
    ] = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Publish every boot input from Debian packages (kernel + modules, systemd stub,
    busybox, the guest's Python runtime and wheels, the demo target disk) as a signed
    multi-arch base artifact, for recipes with `[base] oci = "REF@sha256:..."` (a Mac
    has no apt-get or dpkg-deb). Needs apt-get, dpkg-deb and mkfs.ext4 here; signs with
    --key, default [signing].key."""
    from publisher.media.basepack import push_base
    from publisher.media.recipe import load_recipe

    config = state(ctx).config
    try:
        targets = [Arch.parse(a) for a in arches] if arches else [Arch.X86_64, Arch.AARCH64]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from None
    target = parse_ref(ref)
    signer = signing_key(key or config.signing.key)
    recipe = load_recipe(config.build.recipe)
    client = registry.client(ctx)
    emit(push_base(client, target, recipe, list(dict.fromkeys(targets)), signer), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(push_app, name="push")
