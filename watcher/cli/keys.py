"""`cloudboot key generate`, `sign`, `verify`, `verify-blob`: cosign-compatible keys.

``verify`` and ``verify-blob`` exit 0 when the signature is valid, 3 when it is missing,
invalid or for another digest (the message says which), and 1 when it could not be
checked (registry down, unreadable key).
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
from watcher.cli.errors import InvalidError, UsageError, json_path
from watcher.cli.push import JsonOpt, emit, signing_key
from watcher.cli.registryflags import NO_FLAGS, RegistryFlags, registry_flags

key_app = typer.Typer(rich_markup_mode=None, help="cosign-compatible signing keys.")


def key_paths(private: Path, public: Path, *, force: bool) -> None:
    """Refuse key outputs that would lose a key: one path for both, or files that exist."""
    if private.resolve() == public.resolve():
        raise UsageError(
            f"the private and the public key would both be written to {private}: name the"
            " private key (e.g. -o cosign.key; the public key goes next to it as .pub)",
            where=str(private),
        )
    from publisher.inputs import check_output

    for path in (private, public):
        if path.is_dir():
            raise UsageError("is a directory: name a key file", where=str(path))
        check_output(path, "key")
        if (path.exists() or path.is_symlink()) and not force:
            raise CloudbootError(
                "already exists: not overwritten (pass --force to replace the key pair)",
                where=str(path),
            )


@key_app.command("generate")
def generate(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Private key path (default: [signing].key); the public key is written "
            "next to it with the suffix .pub.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing keys.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write an encrypted cosign.key (mode 0600) and cosign.pub (password: $COSIGN_PASSWORD)."""
    from publisher.signing import read_password, write_key_pair

    if output is None:
        signing = state(ctx).config.signing
        private, public = signing.key, signing.public_key
    else:
        private, public = output, output.with_suffix(".pub")
    key_paths(private, public, force=force)
    password = read_password(confirm=True)
    try:
        write_key_pair(private, public, password, force=force)
    except OSError as exc:
        raise CloudbootError(
            f"cannot write the key pair: {exc.strerror}; choose a writable path with -o",
            where=str(private),
        ) from None
    if as_json:
        doc = {"ok": True, "private_key": json_path(private), "public_key": json_path(public)}
        typer.echo(json.dumps(doc))
        return
    typer.echo(f"Private key written to {private}")
    typer.echo(f"Public key written to {public}")


def _public_key(path: Path) -> cosign.PublicKey:
    from publisher.inputs import MAX_KEY_BYTES, read_input

    data = read_input(path, limit=MAX_KEY_BYTES, what="public key")
    try:
        return load_public_key(data)
    except CloudbootError as exc:
        raise CloudbootError(
            f"not a public key ({exc.message}): pass the cosign.pub from `cloudboot key"
            " generate` or `cosign generate-key-pair`",
            where=str(path),
        ) from None


@registry_flags
def sign(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Image ref to sign (its current digest).")],
    key: Annotated[Path, typer.Option("--key", "-k", help="cosign private key.")],
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Sign what REF points at now and push the signature to sha256-<hex>.sig."""
    from publisher.refsign import sign_ref

    signer = signing_key(key)
    assert signer is not None
    client = registry.client(ctx)
    result = sign_ref(client, parse_ref(ref), signer)
    if as_json:
        emit(result, True)
    else:
        typer.echo(f"{result.ref}@{result.digest} signed: {result.signature_tag}")


@registry_flags
def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Image ref to verify.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="cosign public key (cosign.pub).")],
    as_json: JsonOpt = False,
    registry: RegistryFlags = NO_FLAGS,
) -> None:
    """Exit 0: REF has a valid signature by KEY; 3: missing or invalid; 1: could not check."""
    from publisher.refsign import verify_ref

    public = _public_key(key)
    client = registry.client(ctx)
    try:
        result = verify_ref(client, parse_ref(ref), public)
    except cosign.SigningError as exc:
        raise InvalidError(str(exc)) from None
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
    as_json: JsonOpt = False,
) -> None:
    """Check a `cosign sign-blob` signature of FILE; exit 0 valid, 3 invalid, 1 unreadable."""
    public = _public_key(key)
    from publisher.inputs import MAX_KEY_BYTES, check_regular, read_input

    check_regular(blob, "signed")
    try:
        sig_text = read_input(signature, limit=MAX_KEY_BYTES, what="signature").decode().strip()
        base64.b64decode(sig_text, validate=True)
        data = blob.read_bytes()
    except OSError as exc:
        raise CloudbootError(f"cannot read: {exc.strerror}", where=exc.filename) from None
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidError("signature file is not base64", where=str(signature)) from None
    if not cosign.verify_signature(public, data, sig_text):
        raise InvalidError(f"invalid signature: {signature} does not verify {blob} with {key}")
    if as_json:
        typer.echo(json.dumps({"ok": True, "verified": True, "file": json_path(blob)}))
    else:
        typer.echo(f"Verified OK: {blob}")


def register(app: typer.Typer) -> None:
    app.add_typer(key_app, name="key")
    app.command("sign")(sign)
    app.command("verify")(verify)
    app.command("verify-blob")(verify_blob)
