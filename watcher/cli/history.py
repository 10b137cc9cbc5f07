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
from watcher.cli.push import JsonOpt, signing_key
from watcher.cli.transport import (
    AuthfileOpt,
    CaOpt,
    InsecureOpt,
    PlainHttpOpt,
    TlsVerifyOpt,
    make_client,
)

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
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    tls_verify: TlsVerifyOpt = None,
    ca_bundle: CaOpt = None,
    authfile: AuthfileOpt = None,
) -> None:
    """Move TARGET's tag to exactly the digest SOURCE points at (no re-upload)."""
    from publisher.promote import promote as do_promote

    signer = _key(ctx, key, sign)
    client = make_client(ctx, plain_http, insecure, tls_verify, ca_bundle, authfile)
    result = do_promote(client, parse_ref(source), parse_ref(target), signer)
    text = (
        f"{result.ref}@{result.digest} ({result.signature}, was {result.previous or 'absent'})"
        if result.moved
        else f"{result.ref}@{result.digest} (already there)"
    )
    _echo(result.to_json(), as_json, text)


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)
