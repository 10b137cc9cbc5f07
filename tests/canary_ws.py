"""A workspace for real canary boots (tests/test_canary_qemu.py and bench/canary.py).

The repo's recipe (guest agent) with the workspace's own key, plans on the demo target
disk (``LABEL=cbtarget``, made by `cloudboot publish --canary` as `cloudboot up` does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import REPO, write_signed_workspace


def disk_plan(device: str, note: str) -> str:
    """One target on ``device``; ``note`` makes each version's bytes (and digest) differ."""
    return (
        'default_target = "demo"\n'
        'target "demo" {\n'
        f'  disk {{\n    device = "{device}"\n    fs     = "ext4"\n  }}\n'
        f'  cmdline = ["console=ttyS0", "root=LABEL=cbtarget", "ro", "note={note}"]\n'
        "}\n"
    )


def canary_workspace(root: Path, registry: str, parallel: int = 2) -> Path:
    """Recipe, key (password ``pw``), no plans yet; ``[publish].canary`` on, TCG."""
    write_signed_workspace(root, registry)
    (root / "plans" / "demo.hcl").unlink()
    shutil.copytree(REPO / "kernel", root / "kernel", dirs_exist_ok=True)
    (root / "cloudboot.toml").write_text(
        f'[registry]\nurl = "{registry}"\n'
        f'[publish]\ncanary = true\ncanary_parallel = {parallel}\n[vm]\naccel = "tcg"\n'
    )
    return root
