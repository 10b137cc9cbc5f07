"""sha256 pins of the PyPI archives packed into the guest (issue 13).

``guestpack`` downloads them once into a per-user cache and unpacks them into every
initramfs: pinned by version alone, a substituted file in the index or in the cache would
run as PID 1 code on every machine. Each archive is checked against its pin before it is
unpacked, whether it was just downloaded or found in the cache; a mismatch removes the
file and fails the build, naming it. The hashes are those the package index served for
these exact files (``pip download``), as ``pip-compile --generate-hashes`` records them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from guest.contract.errors import CloudbootError

#: File name -> sha256, one per ``guestpack.PYPI_PACKAGES`` entry.
WHEEL_SHA256 = {
    "ext4-1.4.1-py3-none-any.whl":
        "a92ce289160162d6e68a9ccc9c717184bfa65c1b547de6bd801b248bd98daede",
    "cachetools-7.1.1-py3-none-any.whl":
        "0335cd7a0952d2b22327441fb0628139e234c565559eeb91a8a4ac7551c5353d",
    "crcmod-1.7.tar.gz":
        "dc7051a0db5f2bd48665a990d3ec1cc305a466a77358ca4492826f41f283601e",
    "typing_extensions-4.15.0-py3-none-any.whl":
        "f0fa19c6845758ab08074a0cfa8b7aecb71c999ca73d62883bc25cc018c4e548",
}  # fmt: skip


class WheelHashError(CloudbootError):
    pass


def verify_archive(archive: Path) -> None:
    """Raise (and delete ``archive``) unless it is a pinned file with its pinned hash."""
    expected = WHEEL_SHA256.get(archive.name)
    if expected is None:
        raise WheelHashError(
            "not a pinned guest archive (remove it, or pin it in publisher/media/wheelpins.py)",
            where=str(archive),
        )
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        archive.unlink()
        raise WheelHashError(
            f"sha256 {digest.hexdigest()} is not the pinned {expected}; the file was removed",
            where=str(archive),
        )
