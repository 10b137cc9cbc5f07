"""The host interpreter must be the guest's Python 3.11: ./bootstrap picks it (macOS:
Homebrew's python3.11; Linux: python3 when it is 3.11, else python3.11) and the guest
packer refuses any other, since its bytecode would not load in the guest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

PYENV = Path("/root/.pyenv/versions")


def interpreter(version: str) -> Path | None:
    """A real interpreter of ``version`` on this machine (pyenv, /usr/bin), if any."""
    for candidate in (*sorted(PYENV.glob(f"{version}.*/bin/python{version}")),
                      Path(f"/usr/bin/python{version}")):  # fmt: skip
        if candidate.is_file():
            return candidate
    return None


def fake_path(tmp_path: Path, system: str, links: dict[str, Path]) -> dict[str, str]:
    bin_dir = tmp_path / f"bin-{len(list(tmp_path.glob('bin-*')))}"
    bin_dir.mkdir()
    for tool in ("dirname", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    (bin_dir / "uname").write_text(f"#!/bin/sh\necho {system}\n")
    (bin_dir / "uname").chmod(0o755)
    for name, target in links.items():
        (bin_dir / name).symlink_to(target)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def bootstrap_python(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(REPO / "bootstrap"), "python"], env=env,
                          capture_output=True, text=True)  # fmt: skip


def test_bootstrap_picks_python_3_11(tmp_path: Path) -> None:
    py311, py312, py39 = interpreter("3.11"), interpreter("3.12"), interpreter("3.9")
    if not (py311 and py312 and py39):
        pytest.skip("needs real Python 3.9, 3.11 and 3.12 interpreters")
    # macOS with Homebrew's python@3.11 and a newer python3: python3.11
    mac = bootstrap_python(fake_path(tmp_path, "Darwin", {"python3": py312, "python3.11": py311}))
    assert mac.returncode == 0 and mac.stdout.strip().endswith("/python3.11"), mac.stderr
    # a fresh Mac (python3 is 3.9, no 3.11): the brew command
    bare = bootstrap_python(fake_path(tmp_path, "Darwin", {"python3": py39}))
    assert bare.returncode == 1 and "brew install python@3.11" in bare.stderr
    # Linux: python3 when it is 3.11, else python3.11
    linux = bootstrap_python(fake_path(tmp_path, "Linux", {"python3": py312, "python3.11": py311}))
    assert linux.returncode == 0 and linux.stdout.strip().endswith("/python3.11")
    plain = bootstrap_python(fake_path(tmp_path, "Linux", {"python3": py311}))
    assert plain.returncode == 0 and plain.stdout.strip().endswith("/python3")
    none = bootstrap_python(fake_path(tmp_path, "Linux", {"python3": py312}))
    assert none.returncode == 1 and "apt-get install python3.11" in none.stderr


def test_guest_packer_refuses_another_host_python(tmp_path: Path) -> None:
    """A real 3.12 interpreter runs the packer: it stops before writing anything."""
    py312 = interpreter("3.12")
    if py312 is None:
        pytest.skip("needs a real Python 3.12 interpreter")
    site = next((REPO / ".venv" / "lib").glob("python3.11/site-packages"))
    code = (
        "from pathlib import Path\nfrom guest.contract.arch import Arch\n"
        "from publisher.media import guestpack\n"
        f"guestpack.build_tree(Path({str(tmp_path / 'root')!r}), Arch.X86_64)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{site}", "XDG_CACHE_HOME": str(tmp_path / "c")}
    proc = subprocess.run([str(py312), "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "GuestPythonError" in proc.stderr
    assert "the guest runs Python 3.11 but cloudboot runs on Python 3.12" in proc.stderr
    assert not (tmp_path / "root").exists() and not (tmp_path / "c").exists()
