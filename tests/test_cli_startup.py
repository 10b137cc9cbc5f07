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
    # nor what only other commands need: logging (rich) and typer's pydantic coercion
    assert sorted(modules & {"structlog", "rich", "pydantic", "multiprocessing"}) == []
    modules, proc = loaded("-C", str(REPO), "-v", "--log-format", "json", "plan", "render",
                           str(REPO / "plans" / "default.hcl"), "--arch", "arm64")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(modules & {"structlog", "rich", "pydantic"}) == []


def test_logging_is_configured_when_structlog_is_first_imported() -> None:
    """configure_logging before structlog is loaded still applies (the import hook): a
    module that logs after it gets JSON lines on stderr, at the level -v asked for."""
    code = (
        "import sys\n"
        "from watcher.cli.logsetup import configure_logging\n"
        "configure_logging(1, 'json')\n"
        "assert 'structlog' not in sys.modules\n"
        "import structlog\n"
        "structlog.get_logger('t').debug('hello', password='hunter2')\n"
        "assert structlog.__spec__.loader.__class__.__name__ != '_ThenLoader'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    event = json.loads(proc.stderr.strip().splitlines()[-1])
    assert event["event"] == "hello" and event["level"] == "debug"
    assert event["password"] == "<redacted>" and proc.stdout == ""


def test_typer_options_are_coerced_as_before(tmp_path: Path) -> None:
    """The pydantic-free coercion (watcher/cli/coerce.py) keeps typer's checks and types:
    a list of paths arrives as Paths, a bad int still gets typer's own message."""
    from typer.testing import CliRunner

    from watcher.cli import app

    plan = tmp_path / "p.hcl"
    plan.write_text('target "a" {\n  kernel = "r.io/k:1"\n}\n')
    result = CliRunner().invoke(app, ["-C", str(tmp_path), "plan", "validate", str(plan)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["--verbose", "--log-format", "nope", "plan", "validate"])
    assert result.exit_code == 2 and "expected auto, console or json" in result.output
    result = CliRunner().invoke(app, ["cache-disk", "--size-mib", "abc", str(tmp_path / "d")])
    assert result.exit_code == 2 and "unable to parse string as an integer" in result.output


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


def test_command_home_names_what_each_module_registers() -> None:
    """main() imports only the modules COMMAND_HOME and SUBCOMMAND_HOME name for the
    command line: they must hold every command, group and subcommand where it is
    registered (`plan history` lives in watcher/cli/history.py)."""
    import typer

    from watcher.cli import (
        COMMAND_HOME,
        COMMAND_MODULES,
        SUBCOMMAND_HOME,
        command_tree,
        modules_for,
    )

    registered: dict[str, str] = {}
    for module in COMMAND_MODULES:
        tree = command_tree((module,))
        names = [c.name for c in tree.registered_commands] + [
            g.name for g in tree.registered_groups
        ]
        assert all(isinstance(n, str) for n in names), f"{module}: a command without a name"
        registered.update(dict.fromkeys(names, module))  # type: ignore[arg-type]
    assert registered == COMMAND_HOME
    whole = typer.main.get_command(command_tree())
    assert sorted(whole.commands) == sorted(COMMAND_HOME)  # type: ignore[attr-defined]
    # every subcommand is found from its command line alone, wherever it is registered
    guests = {}
    for name, group in whole.commands.items():  # type: ignore[attr-defined]
        for sub, command in getattr(group, "commands", {}).items():
            module = command.callback.__module__.removeprefix("watcher.cli.")
            if module != COMMAND_HOME[name]:
                guests[(name, sub)] = module
            alone = typer.main.get_command(command_tree(modules_for((name, sub))))
            assert sub in alone.commands[name].commands, (name, sub)  # type: ignore[attr-defined]
        help_tree = typer.main.get_command(command_tree(modules_for((name,))))
        assert sorted(getattr(help_tree.commands[name], "commands", {})) == sorted(  # type: ignore[attr-defined]
            getattr(group, "commands", {})
        )
    assert guests == SUBCOMMAND_HOME


def test_a_command_line_imports_only_its_own_group() -> None:
    """`plan validate` builds the plan group alone; root options before or after the
    command do not hide it; an unknown command still gets click's message (whole tree)."""
    _, proc = loaded("-v", "--log-format=json", "plan", "validate", "-C", str(REPO),
                     str(REPO / "plans"))  # fmt: skip
    assert proc.returncode == 0 and "plan(s) valid" in proc.stderr, proc.stdout + proc.stderr
    code = (
        "import json, sys\nsys.argv = ['cloudboot', '-vv', 'plan', 'validate', sys.argv[1]]\n"
        "from watcher.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps([m for m in sys.modules if m.startswith('watcher.cli.')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "plans")],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    groups = set(json.loads(out.strip().splitlines()[-1])) - {
        "watcher.cli.coerce", "watcher.cli.errors", "watcher.cli.logsetup",
    }  # fmt: skip
    assert groups == {"watcher.cli.plan"}
    _, proc = loaded("nope")
    assert proc.returncode == 2 and "No such command 'nope'" in proc.stderr
