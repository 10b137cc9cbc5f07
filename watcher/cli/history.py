"""`cloudboot promote` and `cloudboot plan history|diff|rollback`: a tag's life after publish.

All four speak about what the registry holds (tags, digests, signatures, annotations);
the library code is ``publisher.promote`` and ``publisher.history``. Each prints a
human summary, or one JSON document with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guest.contract.oci import parse_ref
from watcher.cli import state
from watcher.cli.plan import plan_app
from watcher.cli.push import JsonOpt, signing_key
from watcher.cli.registryflags import NO_FLAGS, RegistryFlags, registry_flags

if TYPE_CHECKING:
    from publisher.signing import SigningKey

KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        "-k",
        help="cosign private key to sign with (default: [signing].key when it exists;"
        " password: $COSIGN_PASSWORD).",
    ),
]


def _key(ctx: typer.Context, path: Path | None, sign: bool = True) -> SigningKey | None:
    """``--key``, else the workspace's key when there is one; None with ``--no-sign``."""
    if not sign:
        return None
    if path is None:
        default = state(ctx).settings.signing.key
        path = default if default.is_file() else None
    return signing_key(path)


def _echo(doc: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(doc, indent=2) if as_json else text)


@registry_flags
def promote(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="What to promote: REPO:TAG or REPO@DIGEST.")],
    target: Annotated[str, typer.Argument(help="The tag to move: REPO:TAG.")],
    key: KeyOpt = None,
    sign: Annotated[
        bool,
        typer.Option(
            "--sign/--no-sign",
            help="Sign anew (default) or carry the existing signature (same repository,"
            " and only when it is fresher than DST's).",
        ),
    ] = True,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Move TARGET's tag to exactly the digest SOURCE points at (no re-upload)."""
    from publisher.promote import promote as do_promote

    signer = _key(ctx, key, sign)
    client = registry.client(ctx)
    result = do_promote(client, parse_ref(source), parse_ref(target), signer)
    text = (
        f"{result.ref}@{result.digest} ({result.signature}, was {result.previous or 'absent'})"
        if result.moved
        else f"{result.ref}@{result.digest} (already there)"
    )
    _echo(result.to_json(), as_json, text)


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)


def _public_keys(ctx: typer.Context, extra: list[Path] | None) -> dict[str, Any]:
    """Keys to name signers by: the workspace's cosign.pub (when there is one) and --pub."""
    from guest.contract.cosign import load_public_key
    from publisher.inputs import MAX_KEY_BYTES, read_input

    paths = list(extra or [])
    default = state(ctx).settings.signing.public_key
    if default.is_file():
        paths.insert(0, default)
    return {
        str(p): load_public_key(read_input(p, limit=MAX_KEY_BYTES, what="public key"))
        for p in paths
    }


def _history_text(history: Any) -> str:
    lines = [f"{history.ref} -> {history.current or '(no such tag)'}"]
    for entry in history.entries:
        mark = "*" if entry.digest == history.current else " "
        signer = entry.signers[0] if entry.signers else None
        when = signer.signed_at if signer else "unsigned"
        who = ", ".join(sorted({s.key for s in entry.signers})) or "-"
        rev = (entry.revision or "-")[:12]
        tags = f" [{', '.join(entry.tags)}]" if entry.tags else ""
        lines.append(f"{mark} {entry.digest[:19]} {when} rev {rev} signed by {who}{tags}")
    if history.truncated:
        lines.append("(truncated: more signed digests than read)")
    lines.append("Not visible here: " + "; ".join(history.blind_spots) + ".")
    return "\n".join(lines)


@plan_app.command("history")
@registry_flags
def history_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The plan's ref (REPO:TAG).")],
    pub: Annotated[
        list[Path] | None,
        typer.Option("--pub", help="More public keys to name signers by (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """The publications of REF's repository, newest signature first (and what is not seen)."""
    from publisher.history import plan_history

    keys = _public_keys(ctx, pub)
    client = registry.client(ctx)
    history = plan_history(client, parse_ref(ref), keys)
    _echo(history.to_json(), as_json, _history_text(history))


@plan_app.command("diff")
@registry_flags
def diff_command(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="A plan file, a ref, or a digest (sha256:...).")],
    b: Annotated[str, typer.Argument(help="A plan file, a ref, or a digest (sha256:...).")],
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """The HCL text diff and, per arch, the diff of the rendered targets. Exit 0 either way."""
    from publisher.plandiff import diff_plans, load_side

    def client() -> Any:
        return registry.client(ctx)

    result = diff_plans(load_side(a, b, client), load_side(b, a, client))
    _echo(result.to_json(), as_json, str(result))


@plan_app.command("rollback")
@registry_flags
def rollback_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The plan's ref (REPO:TAG) to move back.")],
    to: Annotated[
        str,
        typer.Option("--to", help="sha256:DIGEST, or -N: N publications before the current one."),
    ],
    key: KeyOpt = None,
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Publish old content again on REF: same digest, a new signature fresher than the current."""
    from guest.contract.errors import CloudbootError
    from publisher.history import plan_history, rollback

    signer = _key(ctx, key)
    if signer is None:
        raise CloudbootError(
            "rollback signs anew (guests refuse older signatures): pass --key or set [signing].key"
        )
    target = parse_ref(ref)
    client = registry.client(ctx)
    history = plan_history(client, target, _public_keys(ctx, None))
    result = rollback(client, target, to, signer, history)
    text = f"{result.ref}@{result.digest} (from {result.previous}, version {result.version})"
    _echo(
        result.to_json(),
        as_json,
        text if result.moved else f"{result.ref} already at {result.digest}",
    )
