"""Which kernel and initrd a disk boots, named as the distributions name them
(docs/wire-formats.md §5.4, docs/disks.md).

Was the tail of ``guest.agent.diskread``; it works on any reader that can list a
directory, tell whether a path exists and locate a file's bytes, so the ext4 userland
reader and the kernel-mounted xfs/btrfs reader share one set of naming rules:

- kernel: the lexicographically largest match of the first of ``/boot/vmlinuz-*``,
  ``/boot/Image-*``, ``/vmlinuz-*``, ``/Image-*`` that matches anything (the last two:
  the plan's ``device`` is a /boot partition or subvolume);
- initrd: the kernel's suffix after ``initrd.img-``, ``initramfs-``, ``initrd-``,
  ``initramfs.``, each also with ``.img`` (``initramfs-<v>.img`` is Fedora's and RHEL's);
  else, as upstream does, the largest entry next to the kernel with one of those prefixes
  (logged, since it may belong to another kernel); else no initrd (logged, not silent).
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from typing import Protocol

from guest.agent.stage import MAX_BOOT_FILE, FileData
from guest.contract.errors import CloudbootError

KERNEL_PATTERNS = ("/boot/vmlinuz-*", "/boot/Image-*", "/vmlinuz-*", "/Image-*")
KERNEL_PREFIXES = ("vmlinuz-", "Image-", "vmlinux-")
INITRD_PREFIXES = ("initrd.img-", "initramfs-", "initrd-", "initramfs.")
#: Path walks, in every reader: symlink hops (as the kernel allows) and components taken,
#: those that symlinks add included.
MAX_SYMLINK_HOPS = 40
MAX_WALK_STEPS = 4096
#: Rescue and kdump images sit next to the kernels on Fedora/RHEL; never a fallback.
_NOT_A_FALLBACK = ("-rescue-", "kdump")


class DiskReadError(CloudbootError):
    """A disk could not be read as a boot source; ``where`` names the device and path."""


class NoSuchPathError(DiskReadError):
    """The path is not there (or runs through a non-directory): a normal "no"."""


def path_parts(path: str) -> list[str]:
    """A path's components, without empty ones and ``.`` (``..`` is the walker's)."""
    return [p for p in path.split("/") if p not in ("", ".")]


class BootFs(Protocol):
    """What discovery needs from a filesystem reader (ext4 userland or a mount)."""

    where: str

    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def locate(self, path: str, *, limit: int = MAX_BOOT_FILE) -> tuple[str, FileData]: ...


@dataclass(frozen=True)
class BootFiles:
    """What a disk target boots: the kernel, its initrd (may be absent), where they were,
    and what the agent should log about how they were chosen.

    The contents are where they lie on the device when the reader can say so (ext4 in
    plain extents), so staging copies them without reading them into memory first.
    """

    kernel: FileData
    kernel_path: str
    initrd: FileData | None
    initrd_path: str | None
    notes: tuple[str, ...] = ()


def default_kernel(reader: BootFs) -> str:
    """Lexicographically largest match of the first pattern that matches anything."""
    for pattern in KERNEL_PATTERNS:
        directory, glob = posixpath.split(pattern)
        matches = sorted(n for n in reader.listdir(directory) if fnmatch.fnmatchcase(n, glob))
        if matches:
            return posixpath.join(directory, matches[-1])
    raise DiskReadError(
        "no kernel found (looked for " + ", ".join(KERNEL_PATTERNS) + ")", where=reader.where
    )


def kernel_suffix(name: str) -> str | None:
    """``6.1.0-13-amd64`` for ``vmlinuz-6.1.0-13-amd64``; None for other names."""
    for prefix in KERNEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def paired_initrd(reader: BootFs, kernel_path: str) -> str | None:
    """The initrd named after the kernel's suffix, next to the kernel (see the module doc)."""
    directory, name = posixpath.split(kernel_path)
    suffix = kernel_suffix(name)
    if suffix is None:
        return None
    for initrd_prefix in INITRD_PREFIXES:
        for ending in ("", ".img"):
            candidate = posixpath.join(directory, initrd_prefix + suffix + ending)
            if reader.exists(candidate):
                return candidate
    return None


def fallback_initrd(reader: BootFs, kernel_path: str) -> str | None:
    """Upstream's fallback: the largest entry next to the kernel with a known prefix."""
    directory = posixpath.dirname(kernel_path)
    names = sorted(
        n
        for n in reader.listdir(directory)
        if n.startswith(INITRD_PREFIXES) and not any(s in n for s in _NOT_A_FALLBACK)
    )
    return posixpath.join(directory, names[-1]) if names else None


def read_boot_files(reader: BootFs, kernel: str = "", initrd: str = "") -> BootFiles:
    """The kernel (given or default) and its initrd (given, paired, or upstream's fallback)."""
    kernel_path = kernel or default_kernel(reader)
    canon_kernel, kernel_data = reader.locate(kernel_path)
    notes: list[str] = []
    initrd_path = initrd or paired_initrd(reader, canon_kernel)
    if not initrd_path:
        initrd_path = fallback_initrd(reader, canon_kernel)
        if initrd_path:
            notes.append(
                f"no initrd named after {canon_kernel}; using {initrd_path}"
                " (the newest with a known prefix)"
            )
    if not initrd_path:
        notes.append(f"no initrd next to {canon_kernel}: the kernel boots without one")
        return BootFiles(kernel_data, canon_kernel, None, None, tuple(notes))
    canon_initrd, initrd_data = reader.locate(initrd_path)
    return BootFiles(kernel_data, canon_kernel, initrd_data, canon_initrd, tuple(notes))
