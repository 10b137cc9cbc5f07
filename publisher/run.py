"""The one door for external commands on the host.

Every tool we start (xorriso, sgdisk, docker-registry, QEMU, vfkit, apt-get ...) goes
through ``run`` (wait for it) or ``spawn`` (a daemon in a context manager), so failures
always name the shell-quoted command and its status, and daemons are always stopped
whatever fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from guest.contract.errors import CloudbootError

log = structlog.get_logger(__name__)

Arg = str | os.PathLike[str]


class CommandError(CloudbootError):
    """A command exited non-zero; carries its status and the tail of its stderr."""

    def __init__(self, argv: Sequence[Arg], returncode: int, stderr: str = "") -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(
            f"command failed with status {returncode}: {shlex.join(self.argv)}{detail}"
        )


class ToolMissingError(CloudbootError):
    def __init__(self, tool: str, package: str | None = None) -> None:
        hint = f" (Debian package: {package}; apt-get install {package})" if package else ""
        super().__init__(f"required tool {tool!r} not found on PATH{hint}")


def require_tool(tool: str, package: str | None = None) -> str:
    """Resolve a tool on PATH or fail with the package that provides it."""
    found = shutil.which(tool)
    if not found:
        raise ToolMissingError(tool, package)
    return found


#: What a child inherits from our environment, by exact name: what tools need to find
#: things (PATH, HOME, locale, temp dir), to reach the network the way the user's shell
#: does (proxies, CA bundles) and to talk to the user's session (systemctl --user, a
#: credential helper's keyring). Everything else, ``COSIGN_PASSWORD`` and
#: ``REGISTRY_PASSWORD`` above all, stays with us: a child that needs a value is given it
#: explicitly through ``env=``.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
    "SOURCE_DATE_EPOCH", "DEBIAN_FRONTEND", "APT_CONFIG", "DOCKER_CONFIG",
    "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV",
    "GNUPGHOME", "GPG_TTY",  # docker-credential-pass reads the user's gpg setup
})  # fmt: skip
#: ... and by prefix: locale categories, XDG directories, git's, pass's (a credential
#: helper's store), and the VM tools' own settings: ours (``CLOUDBOOT_VFKIT``, the bridge
#: address), vfkit's and QEMU's. None of these carries a secret.
ENV_ALLOW_PREFIXES = (
    "LC_",
    "XDG_",
    "GIT_",
    "PASSWORD_STORE_",
    "CLOUDBOOT_",
    "VFKIT_",
    "QEMU_",
)


def child_env(
    extra: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a child process gets: the allow-listed part of ours, plus ``extra``."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)}
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion; on failure raise ``CommandError`` naming it.

    Output is captured by default so a failing command's stderr ends up in the error,
    not interleaved with our own progress output.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("run", argv=shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=child_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(args[0]) from exc
    if check and proc.returncode != 0:
        stderr = (proc.stderr or b"").decode(errors="replace")
        raise CommandError(args, proc.returncode, stderr)
    return proc


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> int:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def spawn(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: Path | None = None,
    grace: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a daemon for the duration of a ``with`` block and always stop it after.

    Its output goes to ``stdout`` (a log file) when given, else to /dev/null, so a chatty
    daemon can never block on a full pipe.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("spawn", argv=shlex.join(args))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout, "ab")) if stdout else subprocess.DEVNULL
        proc = _start_detached(args, out, env, cwd)
        try:
            yield proc
        finally:
            stop_process(proc, grace=grace)


def launch(
    argv: Sequence[Arg],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon that outlives this process (a VM that a later CLI call stops).

    Unlike ``spawn`` nothing stops it for us: the caller records its pid and owns its
    lifetime. It gets its own session (Ctrl-C in our terminal does not reach it) and
    its output is appended to ``log_file`` so a failed start can be explained.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("launch", argv=shlex.join(args), log_file=str(log_file))
    with open(log_file, "ab") as out:
        return _start_detached(args, out, env, cwd)


def _start_detached(
    args: list[str], out: Any, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    """Popen in its own session (our Ctrl-C does not reach it), output to ``out``."""
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(args[0]) from exc
