"""Project rules checked as tests: lint, format, types, pins, and the guest's independence."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers import REPO

BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    proc = subprocess.run([BIN / "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_clean() -> None:
    proc = subprocess.run(
        [BIN / "ruff", "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pins_agree_with_constraints() -> None:
    """Every exact pin in pyproject.toml (runtime and extras) is the one constraints.txt has."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    wanted = [*project["dependencies"], *(req for extra in extras for req in extra)]
    constraints = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        constraints[canonical(name)] = version.strip()
    pins = [req.split("#")[0].strip() for req in wanted if "==" in req]
    wrong = [
        pin for pin in pins if constraints.get(canonical(pin.split("==")[0])) != pin.split("==")[1]
    ]
    assert not wrong, f"pins not in constraints.txt as pinned: {wrong}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def test_mypy_clean() -> None:
    proc = subprocess.run([BIN / "mypy"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_guest_imports_nothing_from_host_packages() -> None:
    """guest/ is packed alone into the initramfs: it must not reach into the host side."""
    offenders = []
    for path in (REPO / "guest").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("publisher", "watcher", "structlog", "typer"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not offenders, offenders


def test_publisher_does_not_import_watcher() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "publisher").rglob("*.py")
        if any(
            isinstance(n, ast.ImportFrom | ast.Import)
            and any(
                (getattr(n, "module", None) or "").startswith("watcher")
                or a.name.startswith("watcher")
                for a in n.names
            )
            for n in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert not offenders, offenders


def test_cli_version_and_help() -> None:
    out = subprocess.run(
        [BIN / "cloudboot", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("cloudboot ")
    help_text = subprocess.run(
        [BIN / "cloudboot", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "live-reload" in help_text
