"""`cloudboot doctor` on this machine and under a macOS-shaped PATH (no apt-get, dpkg-deb,
mkfs.ext4, docker-registry or qemu), `cloudboot up` stopping on its list before starting
anything, and the pure checks on facts a Linux box cannot produce (vfkit versions, macOS
fix commands)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from publisher.localregistry import free_port, local_registry
from tests.helpers import CLOUDBOOT, REPO
from watcher.preflight import Facts, Status, blocking, check

CLI = CLOUDBOOT
#: Host tools the checks look up whose absence makes a PATH "macOS-shaped".
NOT_ON_A_MAC = ("apt-get", "dpkg-deb", "mkfs.ext4", "docker-registry", "qemu-system-x86_64",
                "qemu-system-aarch64")  # fmt: skip


def workspace(root: Path, extra_recipe: str = "", config: str = "") -> Path:
    (root / "kernel").mkdir(parents=True)
    (root / "kernel" / "recipe.toml").write_text(
        (REPO / "kernel" / "recipe.toml").read_text() + extra_recipe
    )
    (root / "cloudboot.toml").write_text(config)
    return root


def mac_path(root: Path) -> str:
    bin_dir = root / "mac-bin"
    bin_dir.mkdir()
    for tool in ("sh", "zstd", "skopeo"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool) or "")
    assert not any(shutil.which(t, path=str(bin_dir)) for t in NOT_ON_A_MAC)
    return str(bin_dir)


def doctor(ws: Path, path: str | None = None) -> tuple[int, dict[str, dict[str, str]], str]:
    env = {**os.environ, **({"PATH": path} if path else {})}
    proc = subprocess.run([str(CLI), "-C", str(ws), "doctor", "--json"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    text = subprocess.run([str(CLI), "-C", str(ws), "doctor"], capture_output=True, text=True,
                          env=env).stdout  # fmt: skip
    found = {f["check"]: f for f in json.loads(proc.stdout)["findings"]}
    return proc.returncode, found, text


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    code, found, text = doctor(workspace(tmp_path / "ws"))
    print(text)
    assert code == 0, text
    assert found["python"]["status"] == "ok"
    assert found["qemu"]["status"] == "ok" and found["firmware"]["status"] == "ok"
    assert "docker-registry" in found["registry"]["detail"]
    assert found["signing key"]["fix"] == "cloudboot key generate"
    assert found["guest network"]["status"] == "ok"


def test_doctor_under_a_mac_shaped_path(tmp_path: Path) -> None:
    path = mac_path(tmp_path)
    ws = workspace(tmp_path / "ws")
    code, found, text = doctor(ws, path)
    print(text)
    assert code == 1
    assert found["qemu"]["status"] == "missing" and "qemu-system" in found["qemu"]["fix"]
    assert found["registry"]["detail"] == "embedded builtin on 127.0.0.1:5000"
    assert found["boot inputs"]["status"] == "missing"
    assert "cloudboot push base REF" in found["boot inputs"]["fix"]
    assert found["mkfs.ext4"]["fix"] == "apt-get install e2fsprogs"
    # with a base artifact: no Debian tools and no mkfs.ext4 needed; vfkit named if chosen
    based = workspace(tmp_path / "based", '\n[base]\noci = "127.0.0.1:5000/b@sha256:' + "a" * 64
                      + '"\n', '[vm]\nbackend = "vfkit"\n')  # fmt: skip
    code, found, text = doctor(based, path)
    print(text)
    assert found["boot inputs"]["status"] == "ok" and "mkfs.ext4" not in found
    vfkit = {"check": "vfkit", "status": "missing", "detail": "vfkit not on PATH",
             "fix": "brew install vfkit"}  # fmt: skip
    assert found["vfkit"] == vfkit
    # the repo recipe derives the plan ref ({plan} -> oci://{{.Gateway}}:PORT/...)
    assert found["guest network"]["status"] == "ok"
    # a recipe that still names QEMU's host address is what vfkit guests cannot reach
    qemu_host = based.parent / "qemu-host"
    shutil.copytree(based, qemu_host)
    recipe = qemu_host / "kernel" / "recipe.toml"
    recipe.write_text(
        recipe.read_text().replace(
            "cloudboot.plan={plan}", "cloudboot.plan=oci://10.0.2.2:5000/cloudboot/default:latest"
        )
    )
    _, found, _ = doctor(qemu_host, path)
    assert found["guest network"]["status"] == "missing"  # 10.0.2.2 is QEMU's address
    assert "cloudboot.plan={plan}" in found["guest network"]["fix"]
    # `up` stops with the same list before it starts, creates or publishes anything
    for args in (["up"], ["up", "--no-vm"]):
        proc = subprocess.run([str(CLI), "-C", str(ws), *args], capture_output=True,
                              text=True, env={**os.environ, "PATH": path})  # fmt: skip
        assert proc.returncode == 1
        assert "not everything `cloudboot up` needs is here" in proc.stderr
        assert "cloudboot push base REF" in proc.stderr
        # without a VM neither qemu nor the demo disk's mkfs.ext4 is needed
        vm_only = ("apt-get install e2fsprogs", "apt-get install qemu-system-x86")
        assert all((text in proc.stderr) == (args == ["up"]) for text in vm_only)
        assert sorted(p.name for p in ws.iterdir()) == ["cloudboot.toml", "kernel"]


def test_external_registry_reachability(tmp_path: Path) -> None:
    port = free_port()
    ws = workspace(tmp_path / "ws", config=f'[registry]\nurl = "127.0.0.1:{port}"\n'
                   "embedded = false\n")  # fmt: skip
    _, found, _ = doctor(ws)
    assert (
        found["registry"]["status"] == "missing"
        and "does not answer" in found["registry"]["detail"]
    )
    with local_registry(tmp_path / "reg", port=port, implementation="builtin"):
        _, found, _ = doctor(ws)
    assert found["registry"]["status"] == "ok"


def facts(**changes: object) -> Facts:
    tools = {"vfkit": "/opt/homebrew/bin/vfkit", "zstd": "/opt/homebrew/bin/zstd"}
    base: dict[str, object] = {
        "system": "darwin", "python": (3, 11), "backend": "vfkit", "vm_arch": "aarch64",
        "tools": tools, "base": "r@sha256:" + "a" * 64,
        "plan_cmdline": "cloudboot.plan=oci://192.168.64.1:5000/x:y",
    }  # fmt: skip
    return Facts(**{**base, **changes})  # type: ignore[arg-type]


def test_vfkit_versions_and_mac_fix_commands() -> None:
    old = check(facts(vfkit_version="vfkit version: v0.6.1"))
    (vfkit,) = [f for f in old if f.check == "vfkit"]
    assert vfkit.status is Status.MISSING and "0.6.1 is older than 0.6.2" in vfkit.detail
    assert vfkit.fix == "brew upgrade vfkit"
    fine = check(facts(vfkit_version="vfkit version: v0.6.4"))
    assert blocking(fine) == []
    py = check(facts(python=(3, 12), vfkit_version="v0.6.4", tools={"vfkit": "/x"}))[0]
    assert py.fix.startswith("brew install python@3.11") and "3.12" in py.detail
    no_zstd = check(facts(vfkit_version="v0.6.4", tools={"vfkit": "/x"}))
    assert [f.fix for f in blocking(no_zstd)] == ["brew install zstd"]
    for cmdline in ("cloudboot.plan={plan} x", "cloudboot.plan=oci://{{.Gateway}}:5000/a:b"):
        found = check(facts(vfkit_version="v0.6.4", plan_cmdline=cmdline))
        assert [f.status for f in found if f.check == "guest network"] == [Status.OK]
