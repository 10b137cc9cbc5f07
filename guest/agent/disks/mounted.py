"""xfs and btrfs read through the kernel's own drivers, mounted read-only, under a deadline
(docs/disks.md).

Why the kernel and not a userland reader (as ext4 is read): the only maintained pure-Python
xfs/btrfs parsers are the Dissect family, AGPL-3.0, which would make the guest image we
distribute AGPL; writing our own btrfs reader (chunk tree, RAID1 stripes, compressed
extents) is a project of its own. The kernel's drivers are the ones the target itself
boots with, from the same Debian kernel package, and they are packed on demand (not loaded
on the plain ext4 boot). Their risk is that a hostile disk can make a mount or a read stick
in the kernel, so:

- mounts are read-only with no log replay (xfs ``norecovery``, btrfs ``rescue=nologreplay``):
  nothing is written to the disk, not even a journal replay;
- the mount, the walk and the reads run in a worker thread under one deadline; when it
  passes, the agent stops with an error naming the device and the step it was at (a thread
  stuck in the kernel cannot be killed, in a thread or a child process alike; what matters
  is that PID 1 reports it instead of hanging silently);
- paths are walked one component at a time with the same caps as the ext4 reader (symlink
  hops, steps, directory entries), symlinks are resolved against the mount's root, never
  the guest's, and files are read with a size cap.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from guest.agent.disks.bootfiles import (
    MAX_SYMLINK_HOPS,
    MAX_WALK_STEPS,
    DiskReadError,
    NoSuchPathError,
    path_parts,
)
from guest.agent.stage import MAX_BOOT_FILE, FileData
from guest.contract.errors import CloudbootError

T = TypeVar("T")

MAX_DIRECTORY_ENTRIES = 65536
#: mount + walk + reads, all of it.
MOUNT_SECONDS = 60.0
#: Read-only, and nothing replayed: the disk is not ours to change.
MOUNT_OPTIONS = {"xfs": ("norecovery",), "btrfs": ("rescue=nologreplay",)}
_CHUNK = 1 << 20
MS_RDONLY = 1


class Mounter(Protocol):
    """The machine edge: mount ``devices`` (btrfs: every member) read-only at ``target``."""

    def mount(self, fstype: str, devices: list[Path], options: list[str], target: Path) -> None: ...

    def umount(self, target: Path) -> None: ...


def mount_data(fstype: str, devices: list[Path], options: list[str]) -> str:
    """The mount(2) data string: the options, then ``device=`` for btrfs's other members."""
    extra = [f"device={d}" for d in devices[1:]] if fstype == "btrfs" else []
    return ",".join([*options, *extra])


@dataclass
class Progress:
    """Where the worker is, for the error when the deadline passes."""

    step: str = "starting"
    history: list[str] = field(default_factory=list)

    def at(self, step: str) -> None:
        self.step = step


def under_deadline(call: Callable[[Progress], T], seconds: float, where: str) -> T:
    """Run ``call`` in a daemon thread; its result, its exception, or a located timeout."""
    progress = Progress()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["value"] = call(progress)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"disk {where}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise DiskReadError(
            f"gave up after {seconds:g} s at {progress.step}: the kernel's filesystem driver"
            " did not return (a damaged or hostile disk?)",
            where=where,
        )
    if "error" in box:
        error = box["error"]
        if isinstance(error, CloudbootError):
            raise error
        assert isinstance(error, BaseException)
        # an unmount that failed, a bug: still an error that names the device
        raise DiskReadError(f"{type(error).__name__}: {error}", where=where) from error
    return box["value"]  # type: ignore[return-value]


class MountedFs:
    """Read-only paths inside a mounted filesystem, confined to ``root``."""

    def __init__(self, root: Path, where: str, progress: Progress | None = None) -> None:
        self.root = root
        self.where = where
        self._progress = progress or Progress()

    def view(self, subdir: str) -> MountedFs:
        """The same mount seen from a subvolume's directory (btrfs ``root``, ``@``)."""
        canon = self.resolve(subdir)
        return MountedFs(self._host(canon), f"{self.where}:{canon}", self._progress)

    def _host(self, canon: str) -> Path:
        return self.root / canon.lstrip("/")

    @contextmanager
    def _located(self, where: str) -> Iterator[None]:
        try:
            yield
        except DiskReadError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NoSuchPathError("no such file", where=where) from exc
            raise DiskReadError(f"{exc.strerror or exc}", where=where) from exc

    def resolve(self, path: str) -> str:
        """The canonical path (no symlinks, no ``..``) of ``path`` inside the mount."""
        where = f"{self.where}:{path}"
        self._progress.at(f"walking {path}")
        with self._located(where):
            return self._walk(path, where)

    def _walk(self, path: str, where: str) -> str:
        hops = steps = 0
        pending = deque(path_parts(path))
        stack: list[str] = []
        while pending:
            steps += 1
            if steps > MAX_WALK_STEPS:
                raise DiskReadError(f"path walk longer than {MAX_WALK_STEPS} steps", where=where)
            name = pending.popleft()
            if name == "..":
                stack = stack[:-1]
                continue
            here = "/" + "/".join([*stack, name])
            try:
                info = os.lstat(self._host(here))
            except FileNotFoundError:
                raise NoSuchPathError("no such file", where=f"{self.where}:{here}") from None
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise DiskReadError("too many levels of symbolic links", where=where)
                target = os.readlink(self._host(here))
                if target.startswith("/"):
                    stack = []  # the mount's root, never the guest's
                pending.extendleft(reversed(path_parts(target)))
                continue
            if pending and not stat.S_ISDIR(info.st_mode):
                raise NoSuchPathError(f"{here} is not a directory", where=where)
            stack.append(name)
        return "/" + "/".join(stack)

    def listdir(self, path: str) -> list[str]:
        try:
            canon = self.resolve(path)
        except NoSuchPathError:
            return []
        where = f"{self.where}:{canon}"
        host = self._host(canon)
        if not host.is_dir():
            return []
        names: list[str] = []
        with self._located(where), os.scandir(host) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > MAX_DIRECTORY_ENTRIES:
                    raise DiskReadError(
                        f"directory of more than {MAX_DIRECTORY_ENTRIES} entries", where=where
                    )
        return names

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except NoSuchPathError:
            return False
        return True

    def locate(self, path: str, *, limit: int = MAX_BOOT_FILE) -> tuple[str, FileData]:
        """The file's bytes (read now: the mount goes away before staging)."""
        canon = self.resolve(path)
        where = f"{self.where}:{canon}"
        self._progress.at(f"reading {canon}")
        with self._located(where):
            fd = os.open(self._host(canon), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb", buffering=0) as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise DiskReadError("not a regular file", where=where)
                if info.st_size > limit:
                    raise DiskReadError(
                        f"{info.st_size} bytes, more than the {limit} allowed", where=where
                    )
                out = bytearray()
                while len(out) <= info.st_size and (chunk := f.read(_CHUNK)):
                    out += chunk
        if len(out) != info.st_size:
            raise DiskReadError(f"read {len(out)} of {info.st_size} bytes", where=where)
        return canon, bytes(out)


@contextmanager
def mounted(
    mounter: Mounter, fstype: str, devices: list[Path], target: Path, progress: Progress
) -> Iterator[MountedFs]:
    """``devices`` mounted read-only at ``target`` for the block; unmounted after."""
    where = str(devices[0])
    options = list(MOUNT_OPTIONS.get(fstype, ()))
    progress.at(f"mount {fstype} ({mount_data(fstype, devices, options) or 'ro'})")
    target.mkdir(parents=True, exist_ok=True)
    try:
        mounter.mount(fstype, devices, options, target)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.ENODEV:
            hint = f" (no {fstype} driver: is the module in the recipe's initramfs.modules?)"
        raise DiskReadError(f"cannot mount {fstype} read-only: {exc.strerror}{hint}",
                            where=where) from exc  # fmt: skip
    try:
        yield MountedFs(target, where, progress)
    finally:
        progress.at(f"umount {target}")
        mounter.umount(target)


class KernelMounter:
    """The guest's mounter: load the driver (on demand), then mount(2) with MS_RDONLY."""

    def mount(self, fstype: str, devices: list[Path], options: list[str], target: Path) -> None:
        import subprocess

        from guest.agent import sysguest

        subprocess.run(
            [sysguest.BUSYBOX, "modprobe", "-q", fstype],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        data = mount_data(fstype, devices, options)
        sysguest.mount(str(devices[0]), str(target), fstype, MS_RDONLY, data)

    def umount(self, target: Path) -> None:
        from guest.agent import sysguest

        sysguest.umount(str(target))
