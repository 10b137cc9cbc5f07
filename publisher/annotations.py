"""OCI annotations that say where a published artifact came from.

The git revision and remote of the plan's checkout, and ``created`` from
``SOURCE_DATE_EPOCH``. Never the wall clock: an unchanged plan must publish to the same
digest, so re-publishing it sends nothing.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from guest.contract.errors import CloudbootError
from publisher.run import CommandError, ToolMissingError, run

log = structlog.get_logger(__name__)


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
    try:
        rev = run(["git", "-C", workdir, "rev-parse", "HEAD"]).stdout.decode().strip()
        out["org.opencontainers.image.revision"] = rev
        remote = run(["git", "-C", workdir, "remote", "get-url", "origin"], check=False)
        if remote.returncode == 0 and remote.stdout.strip():
            out["org.opencontainers.image.source"] = strip_userinfo(remote.stdout.decode().strip())
    except (CommandError, ToolMissingError):
        log.debug("no git revision for annotations", workdir=str(workdir))
    epoch = env.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            created = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        except ValueError:
            raise CloudbootError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer") from None
        out["org.opencontainers.image.created"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out
