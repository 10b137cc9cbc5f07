"""One watcher per workspace: ``cloudboot up`` and ``cloudboot watch`` hold a lock.

Two watchers on one workspace (an ``up`` forgotten in another terminal, or ``up`` while
the systemd/launchd agent watches the same tree) would both publish and build on every
edit and both restart the one VM, the second restart landing in the middle of the first
boot's staging. So each takes an exclusive ``flock`` on ``.cloudboot/watch.lock`` before
it touches anything, and a second one stops at once, naming the first. The kernel drops
the lock with its holder, so a killed watcher leaves nothing stale behind; the file's
text (pid, command, start) is only there to be quoted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from guest.contract.errors import CloudbootError

#: Relative to the workspace root, next to the status file.
LOCK_FILE = Path(".cloudboot/watch.lock")
HOLDER_MAX = 200


class WorkspaceBusy(CloudbootError):
    pass


@contextlib.contextmanager
def sole_watcher(root: Path, command: str) -> Iterator[None]:
    """Hold the workspace's watcher lock until the block ends, or raise ``WorkspaceBusy``."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, HOLDER_MAX, 0).decode(errors="replace").strip()
            raise WorkspaceBusy(
                f"another watcher runs in this workspace ({holder or 'starting'}); stop it"
                " first (Ctrl-C where it runs; the agent: `systemctl --user stop"
                " cloudboot-watch`, or `launchctl bootout gui/$UID/dev.cloudboot.watch` on a"
                " Mac), or see it with `cloudboot status`",
                where=str(root),
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, `cloudboot {command}` since {since}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
