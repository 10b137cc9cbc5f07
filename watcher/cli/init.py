"""`cloudboot init`: scaffold a workspace a new user can run straight away.

The example plan and the kernel/ recipe are copied from this project's own workspace (the
checkout the package is installed from), so what `init` gives a user is exactly what the test
suite and `./bootstrap up` exercise.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from guest.contract.errors import CloudbootError
from publisher.config import CONFIG_NAME, render_template

PROJECT_ROOT = Path(__file__).resolve().parents[2]

IGNORE_TEMPLATE = """\
# Paths (gitignore-style patterns) that `cloudboot watch` ignores, besides .git and editor
# swap/backup files.
build/
.cloudboot/
"""

GITIGNORE_TEMPLATE = """\
build/
.cloudboot/
cosign.key
"""


def scaffold(target: Path, *, force: bool = False) -> list[Path]:
    """Create the workspace files in ``target``; returns what was written."""
    sources = {
        Path("plans/default.hcl"): PROJECT_ROOT / "plans" / "default.hcl",
    }
    missing = [str(src) for src in sources.values() if not src.is_file()]
    if missing:
        raise CloudbootError(
            "workspace templates not found (cloudboot must be installed from its checkout with "
            f"`pip install -e`): {', '.join(missing)}"
        )
    config_path = target / CONFIG_NAME
    if config_path.exists() and not force:
        raise CloudbootError(
            "already a cloudboot workspace (use --force to overwrite)", where=str(config_path)
        )
    written: list[Path] = []
    target.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_template())
    written.append(config_path)
    for rel, src in sources.items():
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    kernel_src = PROJECT_ROOT / "kernel"
    if kernel_src.is_dir():
        shutil.copytree(kernel_src, target / "kernel", dirs_exist_ok=True)
        written.append(target / "kernel")
    for name, text in ((".cloudbootignore", IGNORE_TEMPLATE), (".gitignore", GITIGNORE_TEMPLATE)):
        path = target / name
        if not path.exists():
            path.write_text(text)
            written.append(path)
    return written


def init(
    directory: Annotated[
        Path, typer.Argument(help="Workspace directory (created if needed).")
    ] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing cloudboot.toml.")] = False,
) -> None:
    """Create cloudboot.toml, an example plan in plans/, the kernel/ recipe and ignore files."""
    for path in scaffold(directory, force=force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: cloudboot -C {directory} plan validate {directory / 'plans'}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
