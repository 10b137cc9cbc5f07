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

if TYPE_CHECKING:  # guest.contract.plan is imported where a plan is read
    from guest.contract.plan import PlanError
    from guest.contract.plan.validate import Report

plan_app = typer.Typer(
    rich_markup_mode=None,
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
            every = sorted(path.rglob("*.hcl"))  # one walk, one stat for a plan file
            found = [p for p in every if p.is_file()]
            files_here = set(found)
            problems += [
                PlanError(_not_a_plan(p), Location(str(p)))
                for p in every
                if p not in files_here and not p.is_dir()
            ]
            if not found:
                problems.append(
                    PlanError("no *.hcl plan files in this directory", Location(str(path)))
                )
            files += found
        elif str(path) == "-" or path.is_file():
            files.append(path)
        else:
            problems.append(PlanError(_not_a_plan(path), Location(str(path))))
    return files, problems


def _not_a_plan(path: Path) -> str:
    """Why ``path`` is no plan file: missing, a broken symlink, a FIFO, a device ..."""
    from publisher.inputs import InputError, check_regular

    try:
        check_regular(path, "plan")
    except InputError as exc:
        return exc.message
    return "not a plan file"


def read_plan_text(path: Path) -> str:
    """The plan as text: bounded, regular files (or ``-``) only, decoded by the one loader."""
    from guest.contract.plan import plan_text
    from publisher.inputs import MAX_PLAN_BYTES, read_input

    return plan_text(read_input(path, limit=MAX_PLAN_BYTES, what="plan"), str(path))


#: From this many files on, ``plan validate`` checks them in one worker process per CPU.
PARALLEL_FROM = 200


def check_files(files: list[Path], *, upstream: bool) -> list[Report]:
    """Reports in the order of ``files``; many files are spread over the CPUs (forked
    workers, so nothing is imported twice), which keeps a GitOps check of a large plans/
    tree fast (bench/plan_parse.py)."""
    import os
    from functools import partial

    workers = min(os.cpu_count() or 1, 8)
    check = partial(check_file, upstream=upstream)
    if len(files) < PARALLEL_FROM or workers < 2:
        return [check(path) for path in files]
    import multiprocessing  # only here: its import is a tenth of the CLI's start-up

    if "fork" not in multiprocessing.get_all_start_methods():
        return [check(path) for path in files]
    from concurrent.futures import ProcessPoolExecutor

    first = check(files[0])  # imports what checking needs once, before the workers fork
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        rest = pool.map(check, files[1:], chunksize=max(1, len(files) // (workers * 4)))
        return [first, *rest]


def check_file(path: Path, *, upstream: bool = False) -> Report:
    """Errors and upstream warnings of one plan file (``upstream``: warnings are errors)."""
    from guest.contract.plan import PlanError
    from guest.contract.plan.validate import Report, check_plan

    try:
        return check_plan(read_plan_text(path), str(path), upstream=upstream)
    except PlanError as exc:
        return Report([exc], [])
    except CloudbootError as exc:  # unreadable, too large, not a regular file
        return Report([PlanError(exc.message, Location(str(path)))], [])


def _json_path(name: str) -> str:
    """Paths in JSON are absolute, as everywhere in the CLI; stdin stays ``-``."""
    from watcher.cli.errors import json_path

    return name if name == "-" else json_path(name)


VALIDATE_HELP = (
    "Check plans as the publisher does before a push, for amd64 and arm64.\n\n"
    "Every error is printed as FILE:LINE:COL: MESSAGE on stdout (a summary goes to stderr), "
    "and every form upstream's guest rejects (docs/plan-language.md §5) as "
    "FILE:LINE:COL: warning: MESSAGE. --upstream (or [publish] upstream = true) makes those "
    "warnings errors. Exit status 0 when all plans are valid, 1 when any is invalid."
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
    upstream: Annotated[
        bool,
        typer.Option("--upstream", help="Forms upstream's guest rejects are errors, not warnings."),
    ] = False,
) -> None:
    """Validate plan files/directories; see VALIDATE_HELP."""
    from guest.contract.plan.validate import Report
    from watcher.cli import state

    if not paths:
        paths = [state(ctx).config.plans_dir]
    upstream = upstream or state(ctx).settings.publish.upstream
    files, problems = plan_files(paths)
    results = {str(p.where.path): Report([p], []) for p in problems}
    for path, report in zip(files, check_files(files, upstream=upstream), strict=True):
        results[str(path)] = report
    invalid = [name for name, report in results.items() if report.errors]
    if as_json:
        typer.echo(json.dumps(_json_report(results, invalid), indent=2))
    else:
        for report in results.values():
            for item in sorted([*report.errors, *report.warnings], key=lambda e: e.sort_key()):
                typer.echo(
                    f"{item.where}: warning: {item.message}"
                    if item in report.warnings
                    else str(item)
                )
        total = sum(len(r.errors) for r in results.values())
        warned = sum(len(r.warnings) for r in results.values())
        summary = (
            f"{len(invalid)} of {len(results)} plan(s) invalid, {total} error(s)"
            if invalid
            else f"{len(results)} plan(s) valid"
        )
        if warned:
            summary += f", {warned} upstream warning(s)"
        typer.echo(summary, err=True)
    if invalid:
        raise typer.Exit(1)


def _json_report(results: dict[str, Report], invalid: list[str]) -> dict[str, Any]:
    def located(items: list[Any]) -> list[dict[str, Any]]:
        return [{**e.to_json(), "path": _json_path(e.where.path)} for e in items]

    return {
        "valid": not invalid,
        "plans": [
            {
                "path": _json_path(name),
                "valid": not report.errors,
                "errors": located(report.errors),
                "warnings": located(report.warnings),
            }
            for name, report in results.items()
        ],
    }


def load_meta(path: Path) -> dict[str, Any]:
    """The metadata document a guest would fetch from cloudboot.metadata.url (a JSON object)."""
    from publisher.inputs import MAX_PLAN_BYTES, read_input

    data = read_input(path, limit=MAX_PLAN_BYTES, what="metadata")  # as the guest's 1 MiB cap
    try:
        doc = json.loads(data)
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
    from guest.contract.plan import PlanError, evaluate_collecting, parse_plan, select_target

    try:
        guest_arch = Arch.parse(arch).oci if arch else Arch.host().oci
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from None
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
