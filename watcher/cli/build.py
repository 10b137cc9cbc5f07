"""`cloudboot build` (boot.iso from the kernel/ recipe), `cloudboot cache-disk` and
`cloudboot kernel build` (an own kernel, built out of tree and cached by its inputs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError
from watcher.cli import state
from watcher.cli.errors import UsageError, json_path, os_hint
from watcher.cli.push import signing_key

#: pyfatfs cannot lay out a FAT32 volume much beyond this (64 GiB fails).
MAX_CACHE_DISK_MIB = 32768

if TYPE_CHECKING:  # image and HTTP libraries: imported by the commands that build
    from publisher.media.build import BuildResult
    from publisher.media.kernelbuild import KernelBuild


def _print_result(result: BuildResult, as_json: bool) -> None:
    if as_json:
        doc = result.to_json()
        doc["output"] = json_path(result.output)
        doc["signature"] = json_path(result.signature) if result.signature else None
        typer.echo(json.dumps(doc))
        return
    verb = "up to date" if result.skipped else "wrote"
    typer.echo(f"{verb} {result.output} ({result.size / 1048576:.1f} MiB, "
               f"{', '.join(a.value for a in result.arches)})")  # fmt: skip
    if result.signature:
        typer.echo(f"signature {result.signature}")
    for stage, seconds in result.timings.items():
        typer.echo(f"  {stage:<14} {seconds * 1000:8.1f} ms")


def check_output_path(path: Path, where: str) -> None:
    """Refuse an output the build could not write, before minutes of work are spent."""
    from publisher.inputs import check_output

    if path.is_dir():
        raise CloudbootError(f"{where} is a directory: name a file", where=str(path))
    check_output(path, where)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CloudbootError(
            f"cannot write here ({where}): {parent} is not a writable directory;"
            " choose another output path",
            where=str(path),
        )


def build(
    ctx: typer.Context,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            "--arch",
            help="x86_64 or aarch64; repeat for a multi-arch ISO "
            "(default: [build].arches plus [vm].arch).",
        ),
    ] = None,
    iso: Annotated[
        Path | None, typer.Option("--iso", help="Output (default: [build].iso).")
    ] = None,
    cmdline: Annotated[
        str | None, typer.Option("--cmdline", help="Baked kernel command line (overrides recipe).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if nothing changed.")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never download: use the package cache only.")
    ] = False,
    no_sign: Annotated[bool, typer.Option("--no-sign", help="Do not write boot.iso.sig.")] = False,
    build_kernel: Annotated[
        bool,
        typer.Option(
            "--build-kernel",
            help="Run make for a { build = ... } kernel that has no cached build yet (slow).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the hybrid boot.iso (UKI per arch) from the kernel/ recipe, and sign it."""
    import structlog

    from publisher.media.build import build_from_config
    from publisher.media.recipe import configured, load_recipe

    log = structlog.get_logger(__name__)
    config = state(ctx).config
    try:
        arches = [Arch.parse(a) for a in arch] if arch else config.media_arches()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from None
    out = iso or config.build.iso
    check_output_path(out, "--iso" if iso else "[build].iso")
    recipe = configured(load_recipe(config.build.recipe), config)
    key = None
    if not no_sign:
        if config.signing.key.is_file():
            key = signing_key(config.signing.key)
        else:
            log.warning("no signing key: boot.iso is not signed", key=str(config.signing.key))
    from watcher.cli.logsetup import use_color

    if recipe.cosign_public_key is None or not Path(recipe.cosign_public_key).is_file():
        typer.secho(
            "warning: no cosign.pub baked into boot.iso: guests booting it will not verify"
            " plan signatures. Run `cloudboot key generate` and build again.",
            err=True,
            fg="yellow" if use_color() else None,
            bold=use_color(),
        )
    progress: Any = None
    bar_ctx: Any = None
    if sys.stderr.isatty() and not as_json:
        bar_ctx = typer.progressbar(length=3 + len(arches) + (1 if key else 0),
                                    label="building boot.iso", file=sys.stderr)  # fmt: skip
        bar = bar_ctx.__enter__()

        def progress(stage: str, done: int, total: int) -> None:
            bar.label = stage
            bar.update(done - bar.pos)

    try:
        result = build_from_config(config, key, arches=arches, out=out, cmdline=cmdline,
                                   progress=progress, force=force, offline=offline,
                                   build_kernel=build_kernel)  # fmt: skip
    except OSError as exc:
        if exc.filename is None or Path(exc.filename).parent != out.parent:
            raise
        why = f"{exc.strerror}{os_hint(exc)}"
        raise CloudbootError(f"cannot write boot.iso: {why}", where=str(out)) from None
    finally:
        if bar_ctx is not None:
            bar_ctx.__exit__(None, None, None)
    _print_result(result, as_json)


def cache_disk(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="Default: [build].cache_disk.")] = None,
    size_mib: Annotated[
        int | None, typer.Option("--size-mib", help="Size of a new disk (default 256).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a file that is not a cache disk.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create the writable cache disk (GPT, ESP named cloud-boot-cache, FAT32); idempotent."""
    from publisher.inputs import check_output

    config = state(ctx).config
    target = path or config.build.cache_disk
    size = size_mib if size_mib is not None else config.build.cache_disk_size_mib
    if not 0 < size <= MAX_CACHE_DISK_MIB:
        raise UsageError(
            f"--size-mib must be 1..{MAX_CACHE_DISK_MIB} (a cache holds kernels and images;"
            f" the FAT32 writer stops there), got {size}",
            where="--size-mib" if size_mib is not None else "[build].cache_disk_size_mib",
        )
    from publisher.media.cachedisk import ensure_cache_disk

    if not target.is_dir():
        check_output(target, "cache disk")

    try:
        created = ensure_cache_disk(target, size, force=force)
    except OSError as exc:
        raise CloudbootError(
            f"cannot write the cache disk: {exc.strerror}; choose a writable path",
            where=str(target),
        ) from None
    if as_json:
        typer.echo(json.dumps({"ok": True, "path": json_path(target), "created": created}))
    else:
        typer.echo(f"{'created' if created else 'kept existing'} {target}")


kernel_app = typer.Typer(
    rich_markup_mode=None,
    help="Own kernels: build a Linux tree out of tree, cached by a hash of its inputs.",
    no_args_is_help=True,
)


KERNEL_BUILD_HELP = (
    'Build (or find cached) a kernel + modules for `kernel = { build = "SRC" }` in the recipe.\n\n'
    "Runs make olddefconfig, the image target (bzImage / Image) and modules, then "
    "modules_install into a staging dir, all out of tree (O=) in the per-user cache.\n\n"
    "The result is keyed by the config, the source tree (git HEAD + dirty files, or file "
    "metadata), the arch, the make variables and the cloudboot version: the same inputs "
    'print "cached" and run no make. A failed make leaves no cache entry.'
)


@kernel_app.command("build", help=KERNEL_BUILD_HELP)
def kernel_build(
    ctx: typer.Context,
    src: Annotated[Path, typer.Option("--src", help="Linux source tree (not modified: O=).")],
    arch: Annotated[
        str | None, typer.Option("--arch", help="x86_64 or aarch64 (default: the host's).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Kernel .config (default: kernel/cloud-<amd64|arm64>.config)."
        ),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="make -j (default: CPU count).")
    ] = None,
    cross_compile: Annotated[
        str | None,
        typer.Option(
            "--cross-compile",
            help="CROSS_COMPILE prefix (default: none on the host arch, else Debian's "
            "aarch64-linux-gnu- / x86_64-linux-gnu-).",
        ),
    ] = None,
    make_vars: Annotated[
        list[str] | None,
        typer.Option(
            "--make-var", help="Extra make variable NAME=VALUE (repeat); part of the hash."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build (or find cached) a kernel + modules for `kernel = { build = "SRC" }`."""
    try:
        target = Arch.parse(arch) if arch else Arch.host()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from None
    if jobs is not None and jobs < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--jobs")
    extra = {}
    for item in make_vars or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--make-var")
        extra[name] = value
    if config is None:
        config = state(ctx).config.build.recipe.parent / f"cloud-{target.oci}.config"
    if not src.is_dir():
        raise CloudbootError("kernel source directory not found", where=str(src))
    from publisher.media.kernelbuild import KernelBuildCache, KernelBuildSpec

    spec = KernelBuildSpec.create(src, target, config, cross_compile, extra)
    _print_kernel(KernelBuildCache().build(spec, jobs), as_json)


def _print_kernel(result: KernelBuild, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    typer.echo(f"{'cached' if result.cached else 'built'} {result.key}")
    typer.echo(f"  image    {result.image}")
    typer.echo(f"  modules  {result.modules_dir or '-'}")
    typer.echo(f"  uname    {result.uname}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("cache-disk")(cache_disk)
    app.add_typer(kernel_app, name="kernel")
