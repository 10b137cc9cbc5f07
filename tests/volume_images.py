"""LUKS test images made the way a user makes them, with cryptsetup and no device-mapper
(docs/wire-formats.md §10): a plain ext4 image grown by the header room, then
``cryptsetup reencrypt --encrypt`` (LUKS2) or that followed by ``cryptsetup convert
--type luks1`` (LUKS1; ``luksFormat`` alone would leave the data to be written through
dm-crypt). KDF costs are forced low so that an unlock under TCG takes seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from publisher.run import run

HEADER_ROOM = 16 << 20


class LogLines:
    """The agent console's ``log`` as a list (what the volume code reports)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def has_cryptsetup() -> bool:
    return shutil.which("cryptsetup") is not None


def make_luks(
    plain: Path, out: Path, passphrase: bytes, *, version: int = 2, sector_size: int = 4096
) -> Path:
    """``out``: ``plain`` encrypted in place of a copy; the passphrase goes in on stdin."""
    shutil.copyfile(plain, out)
    with open(out, "r+b") as f:
        f.truncate(plain.stat().st_size + HEADER_ROOM)
    kdf = (
        ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1",
         "--pbkdf-force-iterations", "4"]
        if version == 2
        else ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    )  # fmt: skip
    run(["cryptsetup", "reencrypt", "--batch-mode", "--encrypt", "--type", "luks2",
         "--sector-size", str(sector_size), "--reduce-device-size", f"{HEADER_ROOM}",
         *kdf, "--key-file", "-", str(out)], input=passphrase)  # fmt: skip
    if version == 1:
        run(["cryptsetup", "convert", "--batch-mode", "--type", "luks1", str(out)])
    return out
