"""``cloudboot agent``: run the watcher in the background as a user service.

Linux gets a systemd user unit (``Type=notify``: the watcher sends READY and WATCHDOG
itself, see ``service.py``), macOS a launchd agent. Both files are rendered here from one
``AgentSpec`` (pure functions, so tests pin them), written atomically, and loaded only
when the service manager is reachable; otherwise the file is left in place with the
command that starts it. ``systemd/`` in the repository holds the rendered examples.
"""

from __future__ import annotations

import enum
import os
import plistlib
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from publisher.run import CommandError, run

log = structlog.get_logger(__name__)

UNIT_NAME = "cloudboot-watch.service"
LAUNCHD_LABEL = "dev.cloudboot.watch"
PLIST_NAME = f"{LAUNCHD_LABEL}.plist"
#: systemd kills and restarts a watcher that stops pinging for this long.
WATCHDOG_SEC = 30


class AgentKind(enum.Enum):
    SYSTEMD = "systemd"
    LAUNCHD = "launchd"

    @classmethod
    def for_host(cls, platform: str = sys.platform) -> AgentKind:
        return cls.LAUNCHD if platform == "darwin" else cls.SYSTEMD


@dataclass(frozen=True)
class AgentSpec:
    """What the service runs: ``argv`` (the cloudboot command) in ``workspace``."""

    argv: tuple[str, ...]
    workspace: Path
    log_dir: Path  # launchd only: where stdout/stderr go (systemd has the journal)

    @property
    def command(self) -> list[str]:
        return [*self.argv, "--log-format", "json", "--workspace", str(self.workspace), "watch"]


def cloudboot_argv() -> tuple[str, ...]:
    """How to start this very cloudboot: its console script next to the interpreter."""
    script = Path(sys.executable).parent / "cloudboot"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "watcher")


def _systemd_quote(arg: str) -> str:
    """Quote one ExecStart word (systemd's rules: double quotes, backslash escapes, %%)."""
    arg = arg.replace("%", "%%")
    if arg and all(c.isalnum() or c in "/._-+=:,@" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(spec: AgentSpec) -> str:
    """The systemd user unit for ``spec``."""
    exec_start = " ".join(_systemd_quote(a) for a in spec.command)
    workdir = str(spec.workspace).replace("%", "%%")
    return f"""\
[Unit]
Description=cloudboot watcher: publish plans/, rebuild kernel/, live-reload the VM
Documentation=man:systemd.service(5)
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
WorkingDirectory={workdir}
Environment=PYTHONUNBUFFERED=1
# COSIGN_PASSWORD=... for an encrypted key goes here (mode 0600), never into this unit.
EnvironmentFile=-%h/.config/cloudboot/watch.env
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec=2
TimeoutStartSec=120
TimeoutStopSec=60
KillMode=mixed
SyslogIdentifier=cloudboot-watch

[Install]
WantedBy=default.target
"""


def render_plist(spec: AgentSpec) -> bytes:
    """The launchd agent for ``spec`` (XML plist)."""
    doc: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": spec.command,
        "WorkingDirectory": str(spec.workspace),
        "RunAtLoad": True,
        # Restart after a crash or a non-zero exit, not after a clean stop (= on-failure).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": 60,
        "ProcessType": "Interactive",  # latency matters: the user waits on each save
        "EnvironmentVariables": {
            "PATH": "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "PYTHONUNBUFFERED": "1",
        },
        "StandardOutPath": str(spec.log_dir / "watch.out.log"),
        "StandardErrorPath": str(spec.log_dir / "watch.log"),
    }
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=False)


def unit_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    config_home = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(config_home).expanduser() / "systemd" / "user" / UNIT_NAME


def plist_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("HOME", "~")).expanduser() / "Library" / "LaunchAgents" / PLIST_NAME


def launchd_log_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("HOME", "~")).expanduser() / "Library" / "Logs" / "cloudboot"


def agent_file(kind: AgentKind) -> Path:
    return unit_path() if kind is AgentKind.SYSTEMD else plist_path()


@dataclass(frozen=True)
class AgentReport:
    """What an agent command did, for humans and ``--json``."""

    kind: AgentKind
    path: Path
    installed: bool
    loaded: bool  # the service manager knows and runs it
    state: str  # systemd ActiveState / launchd state, or "unknown"
    hint: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "path": str(self.path),
            "installed": self.installed,
            "loaded": self.loaded,
            "state": self.state,
            "hint": self.hint,
        }


def systemd_user_reachable() -> bool:
    """True when ``systemctl --user`` can talk to a running user manager."""
    if shutil.which("systemctl") is None:
        return False
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not (Path(runtime) / "systemd" / "private").exists():
        return False
    try:
        run(["systemctl", "--user", "show-environment"], timeout=5)
    except CloudbootError:
        return False
    return True


def launchd_reachable() -> bool:
    return sys.platform == "darwin" and shutil.which("launchctl") is not None


def _manager_reachable(kind: AgentKind) -> bool:
    return systemd_user_reachable() if kind is AgentKind.SYSTEMD else launchd_reachable()


def _launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def install(spec: AgentSpec, kind: AgentKind, *, start: bool = True) -> AgentReport:
    """Write the unit/plist for ``spec`` and, when the manager is reachable, load it."""
    path = agent_file(kind)
    if kind is AgentKind.SYSTEMD:
        write_atomic(path, render_unit(spec).encode())
    else:
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, render_plist(spec))
    log.info("agent file written", path=str(path), kind=kind.value)
    if not start or not _manager_reachable(kind):
        return AgentReport(kind, path, True, False, "not loaded", _start_hint(kind, path))
    if kind is AgentKind.SYSTEMD:
        run(["systemctl", "--user", "daemon-reload"])
        run(["systemctl", "--user", "enable", "--now", UNIT_NAME])
    else:
        domain = _launchd_domain()
        run(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"], check=False)
        run(["launchctl", "bootstrap", domain, path])
    return status(kind)


def uninstall(kind: AgentKind) -> AgentReport:
    """Stop and unload the agent when possible, then remove its file."""
    path = agent_file(kind)
    if _manager_reachable(kind):
        if kind is AgentKind.SYSTEMD:
            run(["systemctl", "--user", "disable", "--now", UNIT_NAME], check=False)
        else:
            run(["launchctl", "bootout", f"{_launchd_domain()}/{LAUNCHD_LABEL}"], check=False)
    existed = path.exists()
    path.unlink(missing_ok=True)
    if kind is AgentKind.SYSTEMD and _manager_reachable(kind):
        run(["systemctl", "--user", "daemon-reload"], check=False)
    hint = "" if existed else "nothing was installed"
    return AgentReport(kind, path, False, False, "removed" if existed else "absent", hint)


def status(kind: AgentKind) -> AgentReport:
    path = agent_file(kind)
    installed = path.is_file()
    if not _manager_reachable(kind):
        hint = _start_hint(kind, path) if installed else "not installed (`cloudboot agent install`)"
        return AgentReport(kind, path, installed, False, "unknown", hint)
    if kind is AgentKind.SYSTEMD:
        proc = run(
            ["systemctl", "--user", "show", UNIT_NAME, "--property=ActiveState,LoadState"],
            check=False,
        )
        props = dict(
            line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line
        )
        state = props.get("ActiveState", "unknown")
        loaded = props.get("LoadState") == "loaded"
        return AgentReport(kind, path, installed, loaded, state)
    try:
        run(["launchctl", "print", f"{_launchd_domain()}/{LAUNCHD_LABEL}"])
    except CommandError:
        return AgentReport(kind, path, installed, False, "not loaded")
    return AgentReport(kind, path, installed, True, "loaded")


def _start_hint(kind: AgentKind, path: Path) -> str:
    if kind is AgentKind.SYSTEMD:
        return (
            "no user systemd reachable here; in a login session run: "
            f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
        )
    return f"load it with: launchctl bootstrap gui/$(id -u) {shlex.quote(str(path))}"
