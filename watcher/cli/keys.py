"""`cloudboot key generate`, `sign`, `verify`, `verify-blob`: cosign-compatible keys.

``verify`` and ``verify-blob`` exit 0 when the signature is valid and 1 otherwise, with a
message that says whether it was missing, invalid, or for another digest.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated

import typer

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import parse_ref
from guest.contract.pubkey import load_public_key
from watcher.cli import state
from watcher.cli.push import CaOpt, InsecureOpt, JsonOpt, emit, make_client, signing_key

key_app = typer.Typer(help="cosign-compatible signing keys.")


@key_app.command("generate")
def generate(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Private key path (default: [signing].key)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing keys.")] = False,
) -> None:
    """Write an encrypted cosign.key (mode 0600) and cosign.pub (password: $COSIGN_PASSWORD)."""
    from publisher.signing import read_password, write_key_pair

    signing = state(ctx).config.signing
    private = output or signing.key
    public = private.with_suffix(".pub") if output else signing.public_key
    write_key_pair(private, public, read_password(confirm=True), force=force)
    typer.echo(f"Private key written to {private}")
    typer.echo(f"Public key written to {public}")


def _public_key(path: Path) -> cosign.PublicKey:
    try:
        return load_public_key(path.read_bytes())
    except OSError as exc:
        raise CloudbootError(f"cannot read public key: {exc.strerror}", where=str(path)) from None


def sign(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Image ref to sign (its current digest).")],
    key: Annotated[Path, typer.Option("--key", "-k", help="cosign private key.")],
    as_json: JsonOpt = False,
    insecure: InsecureOpt = None,
    ca_bundle: CaOpt = None,
) -> None:
    """Sign what REF points at now and push the signature to sha256-<hex>.sig."""
    from publisher.push import sign_ref

    signer = signing_key(key)
    assert signer is not None
    client = make_client(ctx, insecure, ca_bundle)
    result = sign_ref(client, parse_ref(ref), signer)
    if as_json:
        emit(result, True)
    else:
        typer.echo(f"{result.ref}@{result.digest} signed: {result.signature_tag}")


def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Image ref to verify.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="cosign public key (cosign.pub).")],
    as_json: JsonOpt = False,
    insecure: InsecureOpt = None,
    ca_bundle: CaOpt = None,
) -> None:
    """Exit 0 when REF has a valid signature by KEY, 1 when it is missing or invalid."""
    from publisher.push import verify_ref

    public = _public_key(key)
    client = make_client(ctx, insecure, ca_bundle)
    result = verify_ref(client, parse_ref(ref), public)
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "verified": True}))
    else:
        typer.echo(f"Verified OK: {result.ref}@{result.digest}")


def verify_blob(
    blob: Annotated[Path, typer.Argument(help="The signed file (e.g. boot.iso).")],
    key: Annotated[Path, typer.Option("--key", "-k", help="cosign public key.")],
    signature: Annotated[
        Path, typer.Option("--signature", help="base64 signature file (cosign sign-blob).")
    ],
) -> None:
    """Check a `cosign sign-blob` signature of FILE; exit 0 valid, 1 invalid."""
    public = _public_key(key)
    try:
        sig_text = signature.read_text().strip()
        base64.b64decode(sig_text, validate=True)
        data = blob.read_bytes()
    except OSError as exc:
        raise CloudbootError(f"cannot read: {exc.strerror}", where=exc.filename) from None
    except (binascii.Error, UnicodeDecodeError):
        raise cosign.BadSignatureError(
            "signature file is not base64", where=str(signature)
        ) from None
    if not cosign.verify_signature(public, data, sig_text):
        raise cosign.BadSignatureError(
            f"invalid signature: {signature} does not verify {blob} with {key}"
        )
    typer.echo(f"Verified OK: {blob}")


def register(app: typer.Typer) -> None:
    app.add_typer(key_app, name="key")
    app.command("sign")(sign)
    app.command("verify")(verify)
    app.command("verify-blob")(verify_blob)
