"""`cloudboot init`: scaffold a workspace a new user can run straight away.

The example plan and the kernel/ recipe are copied from this project's own workspace (the
checkout the package is installed from), so what `init` gives a user is exactly what the test
suite and `./bootstrap up` exercise.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from guest.contract.errors import CloudbootError
from publisher.config import CONFIG_NAME, render_template
from watcher.cli.errors import json_path

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


def create_new(path: Path, data: bytes) -> bool:
    """Write ``path`` only if it does not exist; False (and nothing written) when it does.

    The bytes go to a temp file that is then hard-linked into place: the link fails when
    the name exists (so a user's file is never replaced, even by a race) and a reader never
    sees a half-written file, even after Ctrl-C.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def replace_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` (only for what ``--force`` says it overwrites)."""
    from guest.contract.fsutil import write_atomic

    write_atomic(path, data)


def add_ignore_lines(path: Path, template: str) -> list[str]:
    """Append the template lines an existing ignore file lacks (cosign.key above all)."""
    text = path.read_text()
    have = {line.strip() for line in text.splitlines()}
    missing = [line for line in template.splitlines() if line and line not in have]
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        with path.open("a") as f:
            f.write(sep + "\n".join(missing) + "\n")
    return missing


@dataclass(frozen=True)
class Scaffold:
    """What ``init`` did: files it wrote, user files it kept, lines added to .gitignore."""

    written: list[Path]
    kept: list[Path]
    gitignore_added: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "written": [json_path(p) for p in self.written],
            "kept": [json_path(p) for p in self.kept],
            "gitignore_added": self.gitignore_added,
        }


def _template_files(target: Path) -> dict[Path, bytes]:
    sources = {Path("plans/default.hcl"): PROJECT_ROOT / "plans" / "default.hcl"}
    missing = [str(src) for src in sources.values() if not src.is_file()]
    if missing:
        raise CloudbootError(
            "workspace templates not found (cloudboot must be installed from its checkout with "
            f"`pip install -e`): {', '.join(missing)}"
        )
    kernel_src = PROJECT_ROOT / "kernel"
    if kernel_src.is_dir():
        for src in sorted(kernel_src.rglob("*")):
            if src.is_file():
                sources[Path("kernel") / src.relative_to(kernel_src)] = src
    files = {target / rel: src.read_bytes() for rel, src in sources.items()}
    files[target / ".cloudbootignore"] = IGNORE_TEMPLATE.encode()
    return files


def scaffold(target: Path, *, force: bool = False) -> Scaffold:
    """Create the workspace files that are missing in ``target``; never touch the others.

    ``force`` replaces cloudboot.toml only (as its help says); plans, the kernel recipe and
    ignore files a user already has are kept byte for byte.
    """
    if target.exists() and not target.is_dir():
        raise CloudbootError("not a directory: choose another workspace path", where=str(target))
    config_path = target / CONFIG_NAME
    if config_path.exists() and not force:
        raise CloudbootError(
            "already a cloudboot workspace (use --force to overwrite cloudboot.toml;"
            " other files are never overwritten)",
            where=str(config_path),
        )
    files = _template_files(target)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    kept: list[Path] = []
    if config_path.exists():
        replace_file(config_path, render_template().encode())
        written.append(config_path)
    else:
        files = {config_path: render_template().encode(), **files}
    for path, data in files.items():
        (written if create_new(path, data) else kept).append(path)
    gitignore = target / ".gitignore"
    added: list[str] = []
    if create_new(gitignore, GITIGNORE_TEMPLATE.encode()):
        written.append(gitignore)
    elif gitignore.is_file():  # not a FIFO or a device that would block the read
        added = add_ignore_lines(gitignore, GITIGNORE_TEMPLATE)
    return Scaffold(written, kept, added)


def init(
    directory: Annotated[
        Path, typer.Argument(help="Workspace directory (created if needed).")
    ] = Path("."),
    force: Annotated[
        bool,
        typer.Option(
            help="Overwrite an existing cloudboot.toml (other existing files are always kept)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create cloudboot.toml, an example plan in plans/, the kernel/ recipe and ignore files.

    Only missing files are written; a file that exists is kept as it is.
    """
    result = scaffold(directory, force=force)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    for path in result.written:
        typer.echo(f"wrote {path}")
    for path in result.kept:
        typer.echo(f"kept existing {path}")
    if result.gitignore_added:
        typer.echo(f"added to {directory / '.gitignore'}: {', '.join(result.gitignore_added)}")
    typer.echo(f"next: cloudboot -C {directory} plan validate {directory / 'plans'}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
