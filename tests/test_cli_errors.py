"""Every bad input gets a clear answer: the CLI as a user (or an adversarial tester) meets it.

Each row runs ``cloudboot`` as its own process in its own copy of a workspace made by
``cloudboot init``, with a real docker-registry (plain, and TLS + htpasswd) where one is
needed and tiny local HTTP servers for what no registry does (``200 text/html`` to
everything, 501, 503). A row names the exit code (0 ok, 1 failed, 2 usage, 3 invalid)
and the words the message must contain; no row may show a traceback. Rows share no
state (own directory, own repository), so they can run in parallel.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from publisher.localregistry import RunningRegistry, free_port
from tests.not_a_registry import fake_server
from tests.registry_tls import TlsRegistry, tls_registry
from watcher.cli.errors import failure_of

CLOUDBOOT = str(Path(sys.executable).parent / "cloudboot")
PASSWORD = "correct horse"


@dataclass(frozen=True)
class Servers:
    reg: RunningRegistry
    tls: TlsRegistry
    html: str
    e501: str
    e503: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    from publisher.localregistry import local_registry

    with (
        local_registry(tmp_path_factory.mktemp("reg")) as reg,
        tls_registry(tmp_path_factory.mktemp("tls")) as tls,
        fake_server(200) as html,
        fake_server(501, "application/json") as e501,
        fake_server(503, "application/json") as e503,
    ):
        yield Servers(reg, tls, html, e501, e503)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace as `cloudboot init` makes it, with a key pair; copied for every row."""
    ws = tmp_path_factory.mktemp("template") / "ws"
    env = {**os.environ, "COSIGN_PASSWORD": PASSWORD}
    subprocess.run([CLOUDBOOT, "init", str(ws)], check=True, capture_output=True, env=env)
    subprocess.run([CLOUDBOOT, "-C", str(ws), "key", "generate"], check=True, env=env,
                   capture_output=True)  # fmt: skip
    return ws


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]
    code: int
    words: tuple[str, ...] = ()
    setup: Callable[[Path, Servers], None] | None = None
    stdin: bytes = b""
    env: dict[str, str | None] = field(default_factory=dict)
    cwd: str = "."
    absent: tuple[str, ...] = ()  # words the message must NOT contain


def toml(text: str) -> Callable[[Path, Servers], None]:
    def setup(ws: Path, s: Servers) -> None:
        (ws / "cloudboot.toml").write_text(text.replace("<REG>", s.reg.address))

    return setup


def write(rel: str, text: str | bytes) -> Callable[[Path, Servers], None]:
    def setup(ws: Path, s: Servers) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)

    return setup


def symlink(rel: str, target: str) -> Callable[[Path, Servers], None]:
    def setup(ws: Path, s: Servers) -> None:
        (ws / rel).symlink_to(target)

    return setup


def fifo(rel: str) -> Callable[[Path, Servers], None]:
    def setup(ws: Path, s: Servers) -> None:
        os.mkfifo(ws / rel)

    return setup


def both(*steps: Callable[[Path, Servers], None]) -> Callable[[Path, Servers], None]:
    def setup(ws: Path, s: Servers) -> None:
        for step in steps:
            step(ws, s)

    return setup


def push_unsigned(ws: Path, s: Servers) -> None:
    subprocess.run(
        [CLOUDBOOT, "push", "plan", f"{s.reg.address}/rows/unsigned:1"],
        cwd=ws, check=True, capture_output=True,
    )  # fmt: skip


def stale_status(ws: Path, s: Servers) -> None:
    status = {
        "version": 1, "pid": 2**22 + 12345, "state": "running",
        "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:05:00Z",
        "vm": {"state": "running", "started_by_watcher": True},
    }  # fmt: skip
    (ws / ".cloudboot").mkdir(exist_ok=True)
    (ws / ".cloudboot/status.json").write_text(json.dumps(status))


GOOD_PLAN = 'target "a" {\n  kernel = "r.example/k:1"\n}\n'
K42 = 'target "a" {\n  disk {\n    device = "LABEL=x"\n    kernel = 42\n  }\n}\n'
NESTED = (
    'target "a" {\n  disk {\n    device = "LABEL=x"\n    disk {\n'
    '      device = "y"\n    }\n  }\n}\n'
)
INVALID = 'target "a" {\n  kernel = "r.example/k:1"\n  arch = "x86"\n}\n'
TWO_TABLES = '[registry]\nurl = "<REG>"\n\n[build]\n\n[registry]\nretry_seconds = 1\n'
ROW_TOML = (
    '[registry]\nurl = "<REG>"\nretry_seconds = 2\n[publish]\nref = "{registry}/<ROW>/{name}:t"\n'
)

ROWS: list[Row] = [
    # init: refuses to clobber, names the path
    Row("init-existing", ["init", "."], 1, ("already a cloudboot workspace", "--force")),
    Row("init-json-existing", ["init", ".", "--json"], 1, ('"ok": false', "already")),
    Row("init-into-file", ["init", "cloudboot.toml"], 1, ("not a directory",)),
    Row("init-unwritable", ["init", "/proc/cloudboot-ws"], 1, ("/proc/cloudboot-ws",)),
    Row("init-bad-option", ["init", "--bogus"], 2, ("No such option: --bogus", "init -h")),
    # key generate: never loses a key
    Row("key-same-path", ["key", "generate", "-o", "k.pub"], 2, ("k.pub", "both")),
    Row("key-exists", ["key", "generate"], 1, ("cosign.key", "already exists", "--force")),
    Row(
        "key-no-password",
        ["key", "generate", "-o", "n.key"],
        1,
        ("COSIGN_PASSWORD",),
        env={"COSIGN_PASSWORD": None},
    ),
    Row("key-into-dir", ["key", "generate", "-o", "plans"], 2, ("is a directory",)),
    Row(
        "key-unwritable",
        ["key", "generate", "-o", "/proc/none/k.key"],
        1,
        ("/proc/none/k.key", "cannot write"),
    ),
    Row(
        "key-public-exists",
        ["key", "generate", "-o", "x.key"],
        1,
        ("x.pub", "already exists"),
        setup=write("x.pub", "mine"),
    ),
    # verify / verify-blob: 3 invalid, 1 could not check
    Row(
        "verify-blob-missing",
        ["verify-blob", "nope.iso", "-k", "cosign.pub", "--signature", "s.sig"],
        1,
        ("nope.iso", "no such file"),
    ),
    Row(
        "verify-blob-invalid",
        ["verify-blob", "b.iso", "-k", "cosign.pub", "--signature", "s.sig"],
        3,
        ("invalid signature",),
        setup=both(write("b.iso", "x"), write("s.sig", "AAAA")),
    ),
    Row(
        "verify-blob-not-base64",
        ["verify-blob", "b.iso", "-k", "cosign.pub", "--signature", "s.sig"],
        3,
        ("not base64",),
        setup=both(write("b.iso", "x"), write("s.sig", "%%%")),
    ),
    Row(
        "verify-blob-key-device",
        ["verify-blob", "b.iso", "-k", "/dev/zero", "--signature", "s.sig"],
        1,
        ("/dev/zero", "character device"),
        setup=write("b.iso", "x"),
    ),
    Row(
        "verify-blob-key-not-key",
        ["verify-blob", "b.iso", "-k", "b.iso", "--signature", "s.sig"],
        1,
        ("not a public key",),
        setup=write("b.iso", "hello"),
    ),
    Row(
        "verify-port-range",
        ["verify", "127.0.0.1:99999/a:b", "-k", "cosign.pub"],
        1,
        ("port 99999",),
    ),
    Row(
        "verify-unsigned",
        ["verify", "<REG>/rows/unsigned:1", "-k", "cosign.pub"],
        3,
        ("no signature",),
        setup=push_unsigned,
    ),
    Row(
        "verify-registry-down",
        ["verify", "<FREE>/a/b:c", "-k", "cosign.pub"],
        1,
        ("connection refused", "cannot reach registry"),
    ),
    Row("verify-key-missing", ["verify", "<REG>/a/b:c", "-k", "nope.pub"], 1, ("nope.pub",)),
    Row(
        "verify-json-failure",
        ["verify", "<REG>/a/b:c", "-k", "nope.pub", "--json"],
        1,
        ('"ok": false', "nope.pub"),
    ),
    Row("sign-key-missing", ["sign", "<REG>/a/b:c", "-k", "nope.key"], 1, ("nope.key",)),
    Row(
        "sign-key-fifo", ["sign", "<REG>/a/b:c", "-k", "k.fifo"], 1, ("FIFO",), setup=fifo("k.fifo")
    ),
    # plan validate / render: bounded reads, exact locations
    Row(
        "validate-missing", ["plan", "validate", "missing.hcl"], 1, ("missing.hcl", "no such file")
    ),
    Row("validate-fifo", ["plan", "validate", "p.fifo"], 1, ("FIFO",), setup=fifo("p.fifo")),
    Row("validate-device", ["plan", "validate", "/dev/null"], 1, ("character device",)),
    Row(
        "validate-dangling",
        ["plan", "validate", "d.hcl"],
        1,
        ("broken symlink",),
        setup=symlink("d.hcl", "gone.hcl"),
    ),
    Row(
        "validate-dir-dangling",
        ["plan", "validate", "plans"],
        1,
        ("gone.hcl", "broken symlink"),
        setup=symlink("plans/gone.hcl", "nothing.hcl"),
    ),
    Row("validate-empty-dir", ["plan", "validate", "kernel"], 1, ("no *.hcl",)),
    Row(
        "validate-stdin",
        ["plan", "validate", "-"],
        0,
        ("1 plan(s) valid",),
        stdin=GOOD_PLAN.encode(),
    ),
    Row(
        "validate-kernel-42",
        ["plan", "validate", "k.hcl"],
        1,
        ("k.hcl:4:", "kernel must be a string"),
        setup=write("k.hcl", K42),
    ),
    Row(
        "validate-nesting-line",
        ["plan", "validate", "n.hcl"],
        1,
        ("n.hcl:4:5", 'block "disk"'),
        setup=write("n.hcl", NESTED),
    ),
    Row(
        "validate-not-utf8",
        ["plan", "validate", "u.hcl"],
        1,
        ("u.hcl:1:", "not UTF-8"),
        setup=write("u.hcl", b"\xff\xfe"),
    ),
    Row(
        "validate-too-large",
        ["plan", "validate", "big.hcl"],
        1,
        ("larger than",),
        setup=write("big.hcl", "#" * (2 << 20)),
    ),
    Row("validate-bad-option", ["plan", "validate", "--bogus"], 2, ("No such option",)),
    Row("render-missing", ["plan", "render", "nope.hcl"], 1, ("nope.hcl", "no such file")),
    Row("render-device", ["plan", "render", "/dev/zero"], 1, ("/dev/zero", "character device")),
    Row(
        "render-bad-arch",
        ["plan", "render", "plans/default.hcl", "--arch", "sparc"],
        2,
        ("--arch", "sparc"),
    ),
    Row(
        "render-meta-missing",
        ["plan", "render", "plans/default.hcl", "--meta", "m.json"],
        1,
        ("m.json",),
    ),
    Row(
        "render-meta-not-json",
        ["plan", "render", "plans/default.hcl", "--meta", "m.json"],
        1,
        ("m.json:1:", "not valid JSON"),
        setup=write("m.json", "{nope"),
    ),
    # push plan: inputs
    Row("push-empty-ref", ["push", "plan", ""], 2, ("empty REF",)),
    Row("push-empty-file", ["push", "plan", "<REG>/x/y:z", "-f", ""], 2, ("empty plan path",)),
    Row(
        "push-dev-zero",
        ["push", "plan", "<REG>/x/y:z", "-f", "/dev/zero"],
        1,
        ("/dev/zero", "character device"),
    ),
    Row(
        "push-fifo",
        ["push", "plan", "<REG>/x/y:z", "-f", "p.fifo"],
        1,
        ("FIFO",),
        setup=fifo("p.fifo"),
    ),
    Row(
        "push-outside-plans",
        ["push", "plan", "-f", "/etc/hostname"],
        1,
        ("outside", "pass the target REF"),
    ),
    Row("push-stdin-no-ref", ["push", "plan", "-f", "-"], 1, ("stdin", "REF"), stdin=b"x"),
    Row(
        "push-invalid-plan",
        ["push", "plan", "<REG>/rows/invalid:1", "-f", "bad.hcl"],
        1,
        ("bad.hcl:3:", "nothing published"),
        setup=write("bad.hcl", INVALID),
    ),
    Row("push-key-missing", ["push", "plan", "<REG>/x/y:z", "-k", "nope.key"], 1, ("nope.key",)),
    Row(
        "push-key-device",
        ["push", "plan", "<REG>/x/y:z", "-k", "/dev/zero"],
        1,
        ("character device",),
    ),
    Row(
        "push-json-failure",
        ["push", "plan", "<REG>/x/y:z", "-k", "nope.key", "--json"],
        1,
        ('"ok": false', '"where"'),
    ),
    # push plan: one ref per plan, config mistakes
    Row(
        "push-placeholder-typo",
        ["push", "plan"],
        1,
        ("[publish].ref", "{nam}", "{name}"),
        setup=toml('[publish]\nref = "{registry}/x/{nam}:latest"\n'),
    ),
    Row(
        "push-refs-missing-plan",
        ["push", "plan"],
        1,
        ('[publish].refs["nope.hcl"]', "no such plan"),
        setup=toml('[registry]\nurl = "<REG>"\n[publish]\nrefs = {"nope.hcl" = "<REG>/a:b"}\n'),
    ),
    Row(
        "push-symlinked-plan",
        ["push", "plan"],
        1,
        ("alias.hcl", "would both publish"),
        setup=both(toml(ROW_TOML), symlink("plans/alias.hcl", "default.hcl")),
    ),
    Row(
        "push-sub-vs-dash",
        ["push", "plan"],
        1,
        ("sub-default.hcl", "would both publish"),
        setup=both(
            toml(ROW_TOML),
            write("plans/sub/default.hcl", GOOD_PLAN),
            write("plans/sub-default.hcl", GOOD_PLAN),
        ),
    ),
    Row(
        "push-refs-collide",
        ["push", "plan"],
        1,
        ("would both publish", "[publish].refs"),
        setup=both(
            toml(ROW_TOML + 'refs = {"b.hcl" = "<REG>/<ROW>/default:t"}\n'),
            write("plans/b.hcl", GOOD_PLAN),
        ),
    ),
    Row(
        "push-dangling-in-plans",
        ["push", "plan"],
        1,
        ("dangling symlink", "gone.hcl"),
        setup=both(toml(ROW_TOML), symlink("plans/gone.hcl", "nothing.hcl")),
    ),
    Row(
        "push-from-subdir",
        ["push", "plan"],
        0,
        ("/<ROW>/default:t@sha256:",),
        cwd="plans",
        setup=toml(ROW_TOML),
    ),
    Row(
        "push-with-C",
        ["-C", "<WS>", "push", "plan"],
        0,
        ("/<ROW>/default:t@sha256:",),
        cwd="/",
        setup=toml(ROW_TOML),
    ),
    Row(
        "push-global-opts-after",
        ["push", "plan", "-v", "-C", "<WS>"],
        0,
        ("@sha256:",),
        cwd="/",
        setup=toml(ROW_TOML),
    ),
    # push plan: transport, with the cause of each failure
    Row("push-port-range", ["push", "plan", "127.0.0.1:99999/a/b:c"], 1, ("port 99999",)),
    Row(
        "push-refused",
        ["push", "plan", "<FREE>/a/b:c"],
        1,
        ("connection refused", "registry serve"),
        absent=("retry",),
    ),
    Row(
        "push-unknown-host",
        ["push", "plan", "no-such-host.invalid:5000/a/b:c"],
        1,
        ("unknown host",),
        absent=("retry",),
    ),
    Row(
        "push-html-server",
        ["push", "plan", "<HTML>/a/b:c"],
        1,
        ("200 (text/html)", "does not answer as an OCI registry"),
    ),
    Row(
        "verify-html-server",
        ["verify", "<HTML>/a/b:c", "-k", "cosign.pub"],
        1,
        ("text/html", "does not answer as an OCI registry"),
    ),
    Row("push-501", ["push", "plan", "<E501>/a/b:c"], 1, ("501",), absent=("registry retry",)),
    Row(
        "push-503-bounded",
        ["push", "plan", "<E503>/a/b:c"],
        1,
        ("unavailable", "503"),
        setup=toml("[registry]\nretry_seconds = 1\n"),
    ),
    Row(
        "push-https-to-plain",
        ["push", "plan", "<REG>/x/y:z", "--no-plain-http"],
        1,
        ("--plain-http",),
        absent=("--ca-bundle",),
    ),
    Row(
        "push-secure-deprecated",
        ["push", "plan", "<REG>/x/y:z", "--secure"],
        1,
        ("deprecated", "--plain-http"),
        absent=("--ca-bundle",),
    ),
    Row(
        "push-insecure-old-meaning",
        ["push", "plan", "<REG>/x/y:z", "--no-plain-http", "--insecure"],
        1,
        ("--plain-http", "only skips certificate checks"),
    ),
    Row(
        "push-ca-missing",
        ["push", "plan", "<REG>/x/y:z", "--ca-bundle", "nope.pem"],
        1,
        ("nope.pem", "no such file"),
    ),
    Row(
        "push-tls-unknown-ca",
        ["push", "plan", "<TLS>/rows/a:b", "--no-plain-http"],
        1,
        ("TLS verification failed", "--ca-bundle", "--insecure"),
    ),
    Row(
        "push-tls-no-creds",
        ["push", "plan", "<TLS>/rows/a:b", "--no-plain-http", "--insecure"],
        1,
        ("401", "cloudboot login", "REGISTRY_USERNAME"),
    ),
    Row(
        "push-tls-env-creds",
        ["push", "plan", "<TLS>/rows/a:b", "--no-plain-http", "--tls-verify=false"],
        1,
        ("401", "REGISTRY_USERNAME/REGISTRY_PASSWORD were refused"),
        absent=("config.json",),
        env={"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "wrong"},
    ),
    Row(
        "push-tls-verify-bad",
        ["push", "plan", "<REG>/x/y:z", "--tls-verify=maybe"],
        2,
        ("--tls-verify",),
    ),
    Row(
        "push-authfile-missing",
        ["push", "plan", "<REG>/x/y:z", "--authfile", "a.json"],
        1,
        ("a.json",),
    ),
    Row(
        "push-artifact-platform",
        ["push", "artifact", "<REG>/a:b", "--platform", "windows/amd64"],
        2,
        ("--platform", "linux/ARCH"),
    ),
    Row(
        "push-index-bad-entry",
        ["push", "index", "<REG>/a:b", "-p", "linux/amd64"],
        2,
        ("linux/ARCH=REF",),
    ),
    Row(
        "push-plain-to-https",
        ["push", "plan", "<TLS>/rows/a:b", "--plain-http"],
        1,
        ("400", "speaks HTTPS", "drop --plain-http"),
    ),
    # workspace and config
    Row(
        "C-nonexistent",
        ["-C", "/nonexistent", "plan", "validate"],
        1,
        ("/nonexistent", "does not exist"),
    ),
    Row("outside-workspace", ["push", "plan"], 1, ("cloudboot init",), cwd="/"),
    Row("outside-workspace-validate", ["plan", "validate"], 1, ("cloudboot init",), cwd="/"),
    Row(
        "toml-duplicate-table",
        ["plan", "validate"],
        1,
        ("cloudboot.toml:6", "[registry] declared twice", "first at line 1"),
        setup=toml(TWO_TABLES),
    ),
    Row(
        "toml-syntax",
        ["plan", "validate"],
        1,
        ("cloudboot.toml:2",),
        setup=toml('[registry]\nurl = "x\n'),
    ),
    Row(
        "toml-unknown-section",
        ["plan", "validate"],
        1,
        ("unknown section",),
        setup=toml("[bogus]\n"),
    ),
    Row("log-format-bad", ["--log-format", "xml", "plan", "validate"], 2, ("--log-format",)),
    Row("unknown-command", ["frobnicate"], 2, ("No such command",)),
    Row("verbose-twice", ["plan", "validate", "-vv"], 0, ("plan(s) valid",)),
    # registry, vm, status, cache-disk, build, kernel
    Row("registry-port-range", ["registry", "serve", "--port", "99999"], 2, ("--port",)),
    Row(
        "registry-not-loopback",
        ["registry", "serve"],
        1,
        ("[registry].url", "loopback"),
        setup=toml('[registry]\nurl = "10.1.2.3:5000"\n'),
    ),
    Row("vm-console-no-vm", ["vm", "console"], 1, ("no VM has run", "cloudboot vm up")),
    Row("status-no-watcher", ["status"], 1, ("no watcher status",)),
    Row(
        "status-stale",
        ["status"],
        0,
        ("vm: stopped", "watcher is not running", "last saw running"),
        setup=stale_status,
        absent=("vm: running",),
    ),
    Row("cache-disk-huge", ["cache-disk", "c.img", "--size-mib", "10485760"], 2, ("--size-mib",)),
    Row("cache-disk-zero", ["cache-disk", "c.img", "--size-mib", "0"], 2, ("--size-mib",)),
    Row(
        "cache-disk-unwritable",
        ["cache-disk", "/proc/none/c.img", "--size-mib", "64"],
        1,
        ("/proc/none/c.img",),
    ),
    Row(
        "cache-disk-not-a-disk",
        ["cache-disk", "c.img"],
        1,
        ("not a cache disk", "--force"),
        setup=write("c.img", "my data"),
    ),
    Row(
        "reset-nvram-unwritable",
        ["vm", "reset-nvram"],
        1,
        ("/proc/cbvm",),
        setup=toml('[vm]\nstate_dir = "/proc/cbvm"\n'),
    ),
    Row("build-iso-dir", ["build", "--iso", "plans"], 1, ("is a directory",)),
    Row("build-bad-arch", ["build", "--arch", "sparc"], 2, ("--arch",)),
    Row(
        "kernel-build-no-src",
        ["kernel", "build", "--src", "/nonexistent"],
        1,
        ("/nonexistent", "not found"),
    ),
    Row("kernel-build-jobs", ["kernel", "build", "--src", ".", "--jobs", "0"], 2, ("--jobs",)),
    Row(
        "publish-collide",
        ["publish"],
        1,
        ("would both publish",),
        setup=both(toml(ROW_TOML), symlink("plans/alias.hcl", "default.hcl")),
    ),
    Row(
        "publish-json-collide",
        ["publish", "--json"],
        1,
        ('"ok": false', "would both publish"),
        setup=both(toml(ROW_TOML), symlink("plans/alias.hcl", "default.hcl")),
    ),
    # outputs that are devices are never replaced, even with --force (root could lose /dev/null)
    Row(
        "key-onto-device",
        ["key", "generate", "-o", "/dev/null", "--force"],
        1,
        ("/dev/null", "character device"),
    ),
    Row(
        "cache-disk-onto-device",
        ["cache-disk", "/dev/null", "--force"],
        1,
        ("/dev/null", "character device"),
    ),
    Row(
        "build-onto-device",
        ["build", "--iso", "/dev/null", "--force"],
        1,
        ("/dev/null", "character device"),
    ),
    Row(
        "render-meta-device",
        ["plan", "render", "plans/default.hcl", "--meta", "/dev/zero"],
        1,
        ("/dev/zero", "character device"),
    ),
    Row(
        "artifact-kernel-device",
        ["push", "artifact", "<REG>/a/k:1", "--kernel", "/dev/zero"],
        1,
        ("/dev/zero", "character device"),
    ),
    Row(
        "index-source-missing",
        ["push", "index", "<REG>/a/i:1", "-p", "linux/amd64=<REG>/a/none:1"],
        1,
        ("manifest unknown", "a/none"),
    ),
    Row("verify-empty-ref", ["verify", "", "-k", "cosign.pub"], 1, ("invalid reference",)),
    Row(
        "render-no-target",
        ["plan", "render", "plans/default.hcl", "--target", "nope"],
        1,
        ('no target "nope"',),
    ),
    # help texts: config keys survive, no metavars on flags that take none
    Row("help-key", ["key", "generate", "--help"], 0, ("[signing].key",), absent=("<bool>",)),
    Row("help-build", ["build", "--help"], 0, ("[build].iso", "--no-sign"), absent=("<bool>",)),
    Row("help-watch", ["watch", "--help"], 0, ("[watch].debounce_ms",), absent=("<bool>",)),
    Row("help-registry", ["registry", "serve", "--help"], 0, ("[registry].url",)),
    Row("help-root", ["--help"], 0, ("-v, --verbose", "-vv"), absent=("<int>", "<bool>")),
    Row("help-push", ["push", "plan", "--help"], 0, ("--plain-http", "--insecure", "--authfile")),
    # login / logout
    Row("login-no-tty", ["login", "<REG>", "-u", "me"], 2, ("--password-stdin",)),
    Row(
        "login-bad-registry",
        ["login", "host:99999", "-u", "me", "--password-stdin"],
        2,
        ("host[:port]",),
        stdin=b"pw\n",
    ),
    Row(
        "login-empty-password",
        ["login", "<REG>", "-u", "me", "--password-stdin"],
        2,
        ("empty password",),
        stdin=b"\n",
    ),
    Row("logout-unknown", ["logout", "<REG>"], 0, ("Not logged in",)),
    Row(
        "login-password-arg", ["login", "<REG>", "-u", "me", "-p", "secret"], 2, ("No such option",)
    ),
]


def _substitute(text: str, ws: Path, s: Servers, row: str) -> str:
    for name, value in (
        ("<WS>", str(ws)), ("<REG>", s.reg.address), ("<TLS>", s.tls.registry.address),
        ("<HTML>", s.html), ("<E501>", s.e501), ("<E503>", s.e503), ("<ROW>", row),
        ("<FREE>", f"127.0.0.1:{free_port()}"),
    ):  # fmt: skip
        text = text.replace(name, value)
    return text


def run_row(
    row: Row, template: Path, s: Servers, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws, symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    rid = row.id.lower()
    if row.setup is not None:
        row.setup(ws, s)
        toml_path = ws / "cloudboot.toml"
        toml_path.write_text(toml_path.read_text().replace("<ROW>", rid))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    env.update({"HOME": str(home), "COSIGN_PASSWORD": PASSWORD, "NO_COLOR": "1"})
    for key, value in row.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    argv = [_substitute(a, ws, s, rid) for a in row.argv]
    cwd = ws / row.cwd if not row.cwd.startswith("/") else Path(row.cwd)
    return subprocess.run(
        [CLOUDBOOT, *argv], input=row.stdin.decode(errors="replace"), capture_output=True,
        text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_clear_answer(
    row: Row, template: Path, servers: Servers, tmp_path: Path
) -> None:
    proc = run_row(row, template, servers, tmp_path)
    said = proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == row.code, said
    for word in row.words:
        expected = _substitute(word, tmp_path / "ws", servers, row.id.lower())
        assert expected in said, f"{expected!r} missing from:\n{said}"
    for word in row.absent:
        assert word not in said, f"{word!r} should not be in:\n{said}"
    if row.code:
        assert "error" in said.lower()  # a message, not silence


def test_the_table_covers_at_least_seventy_inputs() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS) >= 70


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permissions"), (errno.EROFS, "read-only")],
)
def test_os_errors_name_the_path_and_what_to_do(code: int, hint: str) -> None:
    """A full or unwritable output (no way to fill a disk in a parallel-safe test) still
    becomes one message naming the file and the fix."""
    failure = failure_of(OSError(code, os.strerror(code), "/out/boot.iso"))
    assert failure.message.startswith("/out/boot.iso: ") and hint in failure.message
    assert failure.exit_code == 1 and failure.where == "/out/boot.iso"


def test_json_paths_are_absolute(template: Path, servers: Servers, tmp_path: Path) -> None:
    """One form of path in every JSON output, whatever form the user typed."""
    row = Row("json-paths", ["plan", "validate", "plans", "k.hcl", "--json"], 1,
              setup=write("k.hcl", K42))  # fmt: skip
    proc = run_row(row, template, servers, tmp_path)
    doc = json.loads(proc.stdout)
    paths = [p["path"] for p in doc["plans"]] + [
        e["path"] for p in doc["plans"] for e in p["errors"]
    ]
    assert paths and all(Path(p).is_absolute() for p in paths), paths
