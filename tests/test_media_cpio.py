"""publisher.media.cpio: newc bytes checked with GNU cpio, determinism, compression."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from guest.contract.errors import CloudbootError
from publisher.media import cpio
from publisher.run import require_tool, run


def sample() -> list[cpio.Entry]:
    return [
        cpio.file("/init", b"#!/bin/sh\necho hi\n", 0o755),
        cpio.char_device("/dev/console", 5, 1),
        cpio.block_device("/dev/vda", 254, 0, 0o660),
        cpio.symlink("/bin/sh", "busybox"),
        cpio.file("/etc/cloud-boot/plan.hcl", b"x" * 5),
        cpio.directory("/tmp", 0o1777),
    ]


def test_round_trip_with_parents_and_sorting() -> None:
    data = cpio.newc(sample(), mtime=1234)
    entries = cpio.parse_newc(data)
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    assert {"/dev", "/etc", "/etc/cloud-boot", "/bin"} <= set(paths)
    by = {e.path: e for e in entries}
    assert stat.S_ISCHR(by["/dev/console"].mode) and by["/dev/console"].rdev == (5, 1)
    assert stat.S_ISBLK(by["/dev/vda"].mode) and stat.S_IMODE(by["/dev/vda"].mode) == 0o660
    assert stat.S_ISLNK(by["/bin/sh"].mode) and by["/bin/sh"].data == b"busybox"
    assert by["/init"].data.startswith(b"#!") and stat.S_IMODE(by["/init"].mode) == 0o755
    assert stat.S_IMODE(by["/tmp"].mode) == 0o1777


def test_deterministic_regardless_of_order() -> None:
    a = cpio.newc(sample(), mtime=7)
    b = cpio.newc(list(reversed(sample())), mtime=7)
    assert a == b
    assert cpio.newc(sample(), mtime=8) != a
    assert cpio.compress(a, cpio.Compression.GZIP) == cpio.compress(b, cpio.Compression.GZIP)


def test_gnu_cpio_lists_what_we_wrote(tmp_path: Path) -> None:
    tool = require_tool("cpio", "cpio")
    listing = run([tool, "-t", "-v", "--quiet"], input=cpio.newc(sample(), mtime=0)).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}  # fmt: skip
    assert lines["dev/console"].startswith("crw-------")
    assert lines["dev/console"].split()[4:6] == ["5,", "1"]
    assert lines["init"].startswith("-rwxr-xr-x")
    assert "bin/sh -> busybox" in listing
    assert "TRAILER" not in listing
    # and it extracts: file contents intact
    out = tmp_path / "x"
    out.mkdir()
    run([tool, "-i", "-d", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
        input=cpio.newc(sample()), cwd=out)  # fmt: skip
    assert (out / "etc/cloud-boot/plan.hcl").read_bytes() == b"xxxxx"


@pytest.mark.parametrize("how", list(cpio.Compression))
def test_compression_round_trip(how: cpio.Compression) -> None:
    data = cpio.newc(sample())
    packed = cpio.compress(data, how)
    assert cpio.decompress(packed) == data
    if how is not cpio.Compression.NONE:
        assert packed != data


def test_tree_keeps_modes_and_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "root"
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/agent").write_text("#!/bin/sh\n")
    (src / "usr/bin/agent").chmod(0o750)
    (src / "usr/bin/alias").symlink_to("agent")
    entries = {e.path: e for e in cpio.tree(src, "/opt")}
    assert stat.S_IMODE(entries["/opt/usr/bin/agent"].mode) == 0o750
    assert entries["/opt/usr/bin/alias"].data == b"agent"
    (src / "usr").chmod(0o700)
    (src / "usr/lib").mkdir()
    (src / "usr/lib/data").write_text("x")
    (src / "usr/lib/data").chmod(0o600)
    normal = {e.path: stat.S_IMODE(e.mode) for e in cpio.tree(src, normal_modes=True)}
    assert normal == {"/usr": 0o755, "/usr/bin": 0o755, "/usr/bin/agent": 0o755,
                      "/usr/bin/alias": 0o777, "/usr/lib": 0o755,
                      "/usr/lib/data": 0o644}  # fmt: skip


def test_dotdot_refused() -> None:
    with pytest.raises(CloudbootError, match=r"\.\."):
        cpio.file("/etc/../../x", b"")
