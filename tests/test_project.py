"""Project rules checked as tests: lint, format, types, pins, layering, and citations."""

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


def test_guest_contract_imports_nothing_from_the_agent() -> None:
    """guest.contract is what the host uses too: it must not pull PID 1's modules in."""
    offenders = []
    for path in (REPO / "guest" / "contract").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n == "guest.agent" or n.startswith("guest.agent.") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
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


#: Ways code has cited the compat spec kept outside the repository (the shared spec file,
#: "spec 5.7", "(spec 2 and 3)", "spec section 8"); the repository's own docs replace it.
_EXTERNAL_SPEC = re.compile(
    r"shared/spec|cloud-boot-compat|compat spec|\(spec [0-9]|spec section [0-9]"
    r"|\bspec [0-9]+(\.[0-9]+)?\b"
)


def test_code_cites_the_repositorys_docs_not_an_outside_spec() -> None:
    """Comments cite docs/wire-formats.md §N.N (same numbers), never a file outside the repo."""
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for top in ("guest", "publisher", "watcher")
        for path in sorted((REPO / top).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _EXTERNAL_SPEC.search(line)
    ]
    assert not offenders, "cite docs/wire-formats.md §N.N instead:\n" + "\n".join(offenders)


WIRE_FORMATS = REPO / "docs" / "wire-formats.md"
#: ``docs/wire-formats.md §5.5-§5.8``, ``... §2, §3``, ``... §1.3 and §5.4``: the numbers.
_CITATION = re.compile(r"docs/wire-formats\.md((?:[ ,-]|and |§[0-9]+(?:\.[0-9]+)?)+)")


def _sections(markdown: str) -> set[str]:
    """Section numbers of a docs page: ``## 5. Guest`` gives 5, ``### 5.7 Boot0001`` 5.7."""
    found = re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", markdown, re.MULTILINE)
    return set(found)


def test_cited_wire_format_sections_exist() -> None:
    """Every ``docs/wire-formats.md §N.N`` in code, tests, benches and README is a real section."""
    sections = _sections(WIRE_FORMATS.read_text())
    assert {"1", "5", "5.7", "5.11", "10"} <= sections, sorted(sections)
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for top in ("guest", "publisher", "watcher", "tests", "bench", "docs"):
        files += sorted((REPO / top).rglob("*.py")) + sorted((REPO / top).rglob("*.md"))
    dangling = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in _CITATION.finditer(line):
                for cited in re.findall(r"§([0-9]+(?:\.[0-9]+)?)", match.group(1)):
                    if cited not in sections:
                        dangling.append(f"{path.relative_to(REPO)}:{number}: §{cited}")
    assert not dangling, dangling
