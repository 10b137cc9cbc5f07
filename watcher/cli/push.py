"""`cloudboot push plan|artifact|index`: publish OCI artifacts (spec section 2), signed.

Each command prints ``REF@sha256:...`` on stdout (or one JSON object with ``--json``), so
scripts can pin exactly what was published; progress and retries go to the log on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guest.contract.arch import Arch
from guest.contract.oci import parse_ref
from watcher.cli import state

if TYPE_CHECKING:  # requests, cryptography, hcl2: imported by the commands that push
    from publisher.push import PushResult
    from publisher.registry import RegistryClient
    from publisher.signing import SigningKey

push_app = typer.Typer(help="Publish plans, kernel artifacts and multi-arch indexes.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", "-k", help="Sign with this cosign key (password: $COSIGN_PASSWORD)."),
]
InsecureOpt = Annotated[
    bool | None,
    typer.Option(
        "--insecure/--secure",
        help="Plain HTTP / force HTTPS (default: plain HTTP for loopback only).",
    ),
]
CaOpt = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM CA bundle to trust for HTTPS.")
]
AnnotateOpt = Annotated[
    bool,
    typer.Option(
        "--git-annotations",
        help="Add org.opencontainers.image.revision/source (git) and created "
        "($SOURCE_DATE_EPOCH) to the manifest.",
    ),
]


def make_client(
    ctx: typer.Context, insecure: bool | None, ca_bundle: Path | None
) -> RegistryClient:
    from publisher.registry import client_from_config

    return client_from_config(state(ctx).config.registry, insecure=insecure, ca_bundle=ca_bundle)


def signing_key(path: Path | None) -> SigningKey | None:
    """Load a key; ask for the password only when the key is encrypted."""
    if path is None:
        return None
    from publisher.signing import load_key_file

    return load_key_file(path)


def emit(result: PushResult, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        typer.echo(str(result))


@push_app.command("plan")
def push_plan(
    ctx: typer.Context,
    ref: Annotated[
        str | None, typer.Argument(help="Target ref; default from cloudboot.toml.")
    ] = None,
    file: Annotated[Path, typer.Option("--file", "-f", help="The plan (.hcl).")] = Path(
        "plans/default.hcl"
    ),
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    insecure: InsecureOpt = None,
    ca_bundle: CaOpt = None,
    git_annotations: AnnotateOpt = False,
) -> None:
    """Validate a plan for every arch, then push it (and its signature, with --key)."""
    from publisher.annotations import source_annotations
    from publisher.push import publish_plan

    config = state(ctx).config
    target = parse_ref(ref) if ref else parse_ref(config.plan_ref(file))
    signer = signing_key(key)
    annotations = source_annotations(file.resolve().parent) if git_annotations else None
    client = make_client(ctx, insecure, ca_bundle)
    emit(publish_plan(client, target, file, signer, annotations), as_json)


@push_app.command("artifact")
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
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    insecure: InsecureOpt = None,
    ca_bundle: CaOpt = None,
) -> None:
    """Push a kernel (+ initrd, modules, cmdline) artifact for one architecture."""
    from publisher.push import push_artifact

    arch = _platform_arch(platform, "--platform")
    target = parse_ref(ref)
    signer = signing_key(key)
    client = make_client(ctx, insecure, ca_bundle)
    result = push_artifact(client, target, arch, kernel, initrd, modules, cmdline, key=signer)
    emit(result, as_json)


def _platform_arch(text: str, option: str) -> str:
    os_name, _, arch = text.partition("/")
    if os_name != "linux" or not arch:
        raise typer.BadParameter(f"expected linux/ARCH, got {text!r}", param_hint=option)
    try:
        return Arch.parse(arch).oci
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@push_app.command("index")
def push_index_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Target ref of the index.")],
    platforms: Annotated[
        list[str],
        typer.Option("--platform", "-p", help="linux/ARCH=REF, once per architecture."),
    ],
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    insecure: InsecureOpt = None,
    ca_bundle: CaOpt = None,
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
    client = make_client(ctx, insecure, ca_bundle)
    emit(push_index(client, target, entries, signer), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(push_app, name="push")
