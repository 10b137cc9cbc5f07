"""The CLI starts without loading the heavy libraries its commands need later.

`import watcher.cli` builds the whole command tree (every group module), so a top-level
import of pycdlib or requests in any group would make `cloudboot --help` pay for it. Each
check runs in a fresh interpreter and reads ``sys.modules`` there; the commands still
work, and a command loads only what it uses (`plan validate` no HTTP, crypto or images).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from publisher.localregistry import free_port
from tests.helpers import REPO

#: Libraries (top-level package names) that no start-up path may import.
HEAVY = ("pycdlib", "pyfatfs", "cryptography", "requests", "urllib3", "watchdog", "nacl")
#: Also kept out of `import watcher.cli` itself: HCL parsing, retries, logging (rich).
NOT_AT_IMPORT = (*HEAVY, "hcl2", "lark", "tenacity", "structlog", "rich", "pefile", "ext4")

PROBE = """
import atexit, json, sys
def report():
    names = sorted({m.split(".")[0] for m in sys.modules})
    sys.__stderr__.write("MODULES " + json.dumps(names) + "\\n")
atexit.register(report)
sys.argv = ["cloudboot", *sys.argv[1:]]
from watcher.cli import main
main()
"""


def loaded(*argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run the CLI with ``argv`` in a fresh interpreter; the top-level modules it loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES "))), proc


def test_import_watcher_cli_loads_no_heavy_library() -> None:
    code = "import json, sys, watcher.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    modules = {m.split(".")[0] for m in json.loads(out)}
    assert "watcher" in modules and "typer" in modules
    assert sorted(modules & set(NOT_AT_IMPORT)) == []


def test_help_and_version_load_no_heavy_library() -> None:
    modules, proc = loaded("--help")
    assert proc.returncode == 0
    for group in ("init", "plan", "push", "key", "sign", "verify", "build", "vm", "watch", "up"):
        assert f" {group} " in proc.stdout, f"{group} missing from --help"
    assert sorted(modules & set(HEAVY)) == []
    modules, proc = loaded("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("cloudboot ")
    assert sorted(modules & set(NOT_AT_IMPORT)) == []


def test_plan_validate_loads_only_what_it_uses() -> None:
    modules, proc = loaded("-C", str(REPO), "plan", "validate", str(REPO / "plans"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan(s) valid" in proc.stderr
    assert "guest" in modules  # it does parse the plans (our own HCL parser)...
    assert sorted(modules & {*HEAVY, "hcl2", "lark"}) == []  # ...and loads no other


def test_commands_still_reach_their_libraries(tmp_path: Path) -> None:
    """Deferred imports still resolve: pushing a valid plan to a port nobody listens on
    gets as far as the HTTP layer and fails there with the registry error (exit 1), not
    with an ImportError or NameError."""
    (tmp_path / "cloudboot.toml").write_text("[registry]\nretry_seconds = 1\n")
    plan = tmp_path / "plan.hcl"
    plan.write_text('default_target = "a"\ntarget "a" {\n  kernel = "r.io/k:1"\n}\n')
    ref = f"127.0.0.1:{free_port()}/me/plan:t"
    modules, proc = loaded("-C", str(tmp_path), "push", "plan", ref, "-f", str(plan))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert "cannot reach registry" in proc.stderr and "connection refused" in proc.stderr
    assert "requests" in modules
