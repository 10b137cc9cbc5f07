"""OCI annotations that say where a published artifact came from.

The git revision and remote of the plan's checkout, and ``created`` from
``SOURCE_DATE_EPOCH``. Never the wall clock: an unchanged plan must publish to the same
digest, so re-publishing it sends nothing.

``cloudboot push`` stamps the checkout's HEAD (:func:`source_annotations`);
``cloudboot publish`` stamps each plan with the last commit that touched *that file*
(:func:`git_annotations`), so a commit that leaves a plan alone leaves its digest alone.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from guest.contract.errors import CloudbootError
from publisher.run import run

log = structlog.get_logger(__name__)

REVISION = "org.opencontainers.image.revision"
SOURCE = "org.opencontainers.image.source"
CREATED = "org.opencontainers.image.created"


def _git(root: Path, *args: str) -> str | None:
    """git's stripped stdout; None when git fails or is not installed."""
    try:
        proc = run(["git", "-C", root, *args], check=False)
    except CloudbootError:  # git not installed
        return None
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: a CI clone URL carries a token there
    (``https://gitlab-ci-token:...@host/...``) and annotations are public.

    scp-like remotes (``git@host:path``) name an account, not a secret, and stay.
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def source_annotations(workdir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """OCI annotations from git (revision, source) and ``SOURCE_DATE_EPOCH`` (created).

    Never the wall clock: without ``SOURCE_DATE_EPOCH`` there is no ``created``.
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    rev = _git(workdir, "rev-parse", "HEAD")
    if rev:
        out[REVISION] = rev
        remote = _git(workdir, "remote", "get-url", "origin")
        if remote:
            out[SOURCE] = strip_userinfo(remote)
    else:
        log.debug("no git revision for annotations", workdir=str(workdir))
    epoch = env.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            created = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        except ValueError:
            raise CloudbootError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer") from None
        out[CREATED] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def git_source(root: Path, env: Mapping[str, str]) -> str | None:
    """Where the plans come from: the CI's repository URL, else git's ``origin``."""
    server, repo = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"{server}/{repo}"
    remote = _git(root, "remote", "get-url", "origin")
    return strip_userinfo(remote) if remote else None


def plan_revision(root: Path, plan: Path) -> str | None:
    """The last commit that changed ``plan``; ``-dirty`` when the file differs from it."""
    rev = _git(root, "log", "-1", "--format=%H", "--", str(plan))
    if not rev:
        return None
    dirty = _git(root, "status", "--porcelain", "--", str(plan))
    return f"{rev}-dirty" if dirty else rev


def git_annotations(root: Path, env: Mapping[str, str]) -> Callable[[Path], dict[str, str]]:
    """Per-plan annotations for ``cloudboot publish``: the plan's own revision, the source."""
    source = git_source(root, env)

    def annotations(plan: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        revision = plan_revision(root, plan)
        if revision:
            out[REVISION] = revision
        if source:
            out[SOURCE] = source
        return out

    return annotations


def _plans_arg(root: Path, plans_dir: Path) -> str:
    return plans_dir.resolve().relative_to(root.resolve()).as_posix()


def plan_revisions(root: Path, plans_dir: Path) -> tuple[dict[str, str], set[str]]:
    """What :func:`plan_revision` says for every file under plans/, in two git runs.

    Paths are relative to ``root``: the last commit that touched each (one ``git log``
    walk, newest first) and the set of files that differ from HEAD. A thousand plans
    cost two processes, not two thousand.
    """
    where = _plans_arg(root, plans_dir)
    walk = _git(root, "log", "-z", "--format=%x01%H", "--name-only", "--relative", "--", where)
    last: dict[str, str] = {}
    for entry in (walk or "").split("\x01")[1:]:
        rev, _, names = entry.partition("\0")
        for name in names.lstrip("\n").split("\0"):
            if name:
                last.setdefault(name, rev)
    diff = _git(root, "diff", "-z", "--name-only", "--relative", "HEAD", "--", where)
    return last, {n for n in (diff or "").split("\0") if n}


def fleet_annotations(
    root: Path, plans_dir: Path, env: Mapping[str, str]
) -> Callable[[Path], dict[str, str]]:
    """:func:`git_annotations` for a one-off publish of many plans, with revisions batched."""
    source = git_source(root, env)
    last, dirty = plan_revisions(root, plans_dir)

    def annotations(plan: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        rel = plan.resolve().relative_to(root.resolve()).as_posix()
        if revision := last.get(rel):
            out[REVISION] = f"{revision}-dirty" if rel in dirty else revision
        if source:
            out[SOURCE] = source
        return out

    return annotations


def deleted_plan_files(root: Path, plans_dir: Path) -> list[str]:
    """Files under plans/ that git history deleted (relative to plans/), newest first."""
    where = _plans_arg(root, plans_dir)
    out = _git(
        root, "log", "-z", "--diff-filter=D", "--format=", "--name-only", "--relative", "--", where
    )
    names = dict.fromkeys(n.lstrip("\n") for n in (out or "").split("\0"))
    prefix = f"{where}/" if where != "." else ""
    return [n.removeprefix(prefix) for n in names if n.strip() and n.startswith(prefix)]
