"""`cloudboot plan`: validate plans and preview what a guest would boot.

`validate` runs exactly the checks the publisher runs before a push (for amd64 and arm64)
and prints every error as ``file:line:col: message``; `render` evaluates a plan for one
arch, as the guest would, and prints the targets as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guest.contract.arch import Arch
from guest.contract.errors import CloudbootError, Location

if TYPE_CHECKING:  # guest.contract.plan pulls in hcl2/lark: imported where a plan is read
    from guest.contract.plan import PlanError

plan_app = typer.Typer(
    help="Check boot plans (HCL) and preview the targets a guest would boot.",
    no_args_is_help=True,
)


def plan_files(paths: list[Path]) -> tuple[list[Path], list[PlanError]]:
    """Files named directly, plus every *.hcl under named directories (sorted)."""
    from guest.contract.plan import PlanError

    files: list[Path] = []
    problems: list[PlanError] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.hcl") if p.is_file())
            if not found:
                problems.append(
                    PlanError("no *.hcl plan files in this directory", Location(str(path)))
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(PlanError("no such file or directory", Location(str(path))))
    return files, problems


def validate_file(path: Path) -> list[PlanError]:
    from guest.contract.plan import PlanError, read_plan_text, validate_plan

    try:
        return validate_plan(read_plan_text(path), str(path))
    except PlanError as exc:
        return [exc]


VALIDATE_HELP = (
    "Check plans as the publisher does before a push, for amd64 and arm64.\n\n"
    "Every error is printed as FILE:LINE:COL: MESSAGE on stdout (a summary goes to stderr). "
    "Exit status 0 when all plans are valid, 1 when any is invalid."
)

RENDER_HELP = (
    "Evaluate a plan for one arch and print its targets as JSON.\n\n"
    "Shows what a guest on that arch would see: name, label, arch, source (OCI refs, disk "
    "fields or subplan ref) and the cmdline as one string. On the host, lldp.* is unavailable "
    "and meta.* is empty unless --meta is given. Secrets (luks-passphrase) are redacted."
)


@plan_app.command("validate", help=VALIDATE_HELP)
def validate_command(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Plan files or directories (searched for *.hcl); default: plans/."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Validate plan files/directories; see VALIDATE_HELP."""
    import structlog

    log = structlog.get_logger(__name__)
    if not paths:
        from watcher.cli import state

        paths = [state(ctx).config.plans_dir]
    files, problems = plan_files(paths)
    results = {str(p.where.path): [p] for p in problems}
    for path in files:
        results[str(path)] = validate_file(path)
        log.debug("plan validated", plan=str(path), errors=len(results[str(path)]))
    invalid = [name for name, errors in results.items() if errors]
    if as_json:
        report = {
            "valid": not invalid,
            "plans": [
                {"path": name, "valid": not errors, "errors": [e.to_json() for e in errors]}
                for name, errors in results.items()
            ],
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        for errors in results.values():
            for error in errors:
                typer.echo(str(error))
        total = sum(len(e) for e in results.values())
        summary = (
            f"{len(invalid)} of {len(results)} plan(s) invalid, {total} error(s)"
            if invalid
            else f"{len(results)} plan(s) valid"
        )
        typer.echo(summary, err=True)
    if invalid:
        raise typer.Exit(1)


def load_meta(path: Path) -> dict[str, Any]:
    """The metadata document a guest would fetch from cloudboot.metadata.url (a JSON object)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise CloudbootError(f"cannot read metadata: {exc.strerror}", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where: Location | str = str(path)
        if isinstance(exc, json.JSONDecodeError):
            where = Location(str(path), exc.lineno, exc.colno)
        raise CloudbootError(f"metadata is not valid JSON: {exc}", where=where) from None
    if not isinstance(doc, dict):
        raise CloudbootError("metadata must be a JSON object", where=str(path))
    return doc


@plan_app.command("render", help=RENDER_HELP)
def render_command(
    path: Annotated[Path, typer.Argument(help="The plan file.")],
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Guest arch: amd64 or arm64 (default: this machine's)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Render only the target a guest would pick by this name."),
    ] = None,
    meta: Annotated[
        Path | None,
        typer.Option("--meta", help="Metadata JSON to evaluate meta.* against (default: empty)."),
    ] = None,
) -> None:
    """Print one arch's evaluated targets; see RENDER_HELP."""
    from guest.contract.plan import (
        PlanError,
        evaluate_collecting,
        parse_plan,
        read_plan_text,
        select_target,
    )

    guest_arch = arch or Arch.host().oci
    plan = parse_plan(read_plan_text(path), str(path))
    evaluated, errors = evaluate_collecting(
        plan, guest_arch, meta=load_meta(meta) if meta else None
    )
    if errors:
        for error in sorted(errors, key=PlanError.sort_key):
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    doc = evaluated.to_json()
    if target is not None:
        doc["targets"] = [select_target(evaluated, target).to_json()]
    typer.echo(json.dumps(doc, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")
