"""A distribution artifact's extra layers, handed on the way upstream does
(docs/wire-formats.md §2.3, §2.4).

Alpine and Debian-live artifacts carry more than a kernel and an initrd: a ``modloop``
(Alpine's squashfs of kernel modules), an ``apkovl`` (Alpine's system overlay, a tar.gz)
and a live system's ``squashfs``. The big ones stay in the registry and the target's own
init fetches them: the staged kernel's command line gets ``modloop=<blob URL>`` and
``boot=live fetch=<blob URL>``. The apkovl is small and Alpine's init picks how to unpack
it from the file name's suffix (a blob URL ends in a digest), so it travels inside the
initrd: a gzip newc member ``/apkovl.tar.gz`` concatenated onto it, and
``apkovl=/apkovl.tar.gz`` on the command line. A directive the command line already
sets is left alone, as upstream does.

Pure: bytes and strings in, bytes and strings out.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

#: Where upstream puts the apkovl in the target's initramfs.
APKOVL_PATH = "/apkovl.tar.gz"
#: An apkovl is a few KiB to a few MiB of configuration: the bound keeps a hostile
#: manifest from filling the guest's memory (it is fetched, not pointed at).
MAX_APKOVL = 64 << 20


@dataclass(frozen=True)
class Extras:
    """What the extra layers add: blob URLs to point at, an overlay to embed."""

    modloop_url: str | None = None
    squashfs_url: str | None = None
    apkovl: bytes | None = None

    def cmdline(self, cmdline: str) -> str:
        """``cmdline`` with the directives these layers need that it does not set yet."""
        words = [cmdline] if cmdline else []
        if self.modloop_url and "modloop=" not in cmdline:
            words.append(f"modloop={self.modloop_url}")
        if self.apkovl is not None and "apkovl=" not in cmdline:
            words.append(f"apkovl={APKOVL_PATH}")
        if self.squashfs_url and "fetch=" not in cmdline:
            words.append(f"boot=live fetch={self.squashfs_url}")
        return " ".join(words)

    def initrd(self, initrd: bytes) -> bytes:
        """The initrd with the apkovl appended as its own gzip cpio archive (the kernel
        unpacks concatenated archives in turn; zero padding between them is skipped)."""
        if self.apkovl is None:
            return initrd
        return initrd + bytes(-len(initrd) % 4) + apkovl_archive(self.apkovl)


def _newc_member(ino: int, mode: int, name: str, data: bytes) -> bytes:
    """One newc ("070701") member: 13 hex fields, the NUL-ended name, 4-byte padding."""
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
    head = b"070701" + b"".join(b"%08X" % value for value in fields) + raw
    return head + bytes(-len(head) % 4) + data + bytes(-len(data) % 4)


def apkovl_archive(overlay: bytes) -> bytes:
    """A gzip newc archive holding ``overlay`` as ``/apkovl.tar.gz`` (0644), same bytes
    for the same overlay (no timestamps)."""
    body = _newc_member(1, 0o100644, APKOVL_PATH.lstrip("/"), overlay)
    body += _newc_member(0, 0, "TRAILER!!!", b"")
    return gzip.compress(body, compresslevel=6, mtime=0)
