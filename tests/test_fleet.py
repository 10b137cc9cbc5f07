"""Publishing many plans: cost proportional to change, deleted plans, validation memory.

The scale test publishes 1,000 generated plans to a real docker-registry behind the
counting proxy, changes one, publishes again with the real CLI and counts at the
registry what the second run wrote.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import parse_ref
from publisher import pins, plancheck
from publisher.annotations import fleet_annotations, plan_revision
from publisher.config import load_config
from publisher.fleet import PlanMemory, check_plans, validator_fingerprint
from publisher.localregistry import RunningRegistry
from publisher.progress import Progress
from publisher.push import push_artifact
from publisher.registry import RegistryClient
from publisher.sigtag import existing_signatures
from publisher.workspace import publish_workspace
from tests.faulty_proxy import faulty_proxy
from tests.helpers import PLAN, skopeo_digest, write_signed_workspace
from tests.test_gitops import git

BIN = Path(sys.executable).parent
T = TypeVar("T")


def plan_text(n: object, kernel: str = "127.0.0.1:1/k:1") -> str:
    return PLAN.replace("v=1", f"v={n}").replace("127.0.0.1:1/k:1", kernel)


def fleet(root: Path, registry: str, count: int, kernel: str = "127.0.0.1:1/k:1") -> list[Path]:
    write_signed_workspace(root, registry)
    (root / "plans" / "demo.hcl").unlink()
    paths = [root / "plans" / f"p{n:04}.hcl" for n in range(count)]
    for n, path in enumerate(paths):
        path.write_text(plan_text(n, kernel))
    (root / ".gitignore").write_text("cosign.key\n.cloudboot/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "plans")
    return paths


def cli_publish(root: Path, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COSIGN_PASSWORD": "pw"}
    proc = subprocess.run(
        ["cloudboot", "publish", "--json", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    report = json.loads(proc.stdout)["plans"] if proc.stdout.strip() else []
    return proc.returncode, {str(o["plan"]): o for o in report}, proc.stderr


@pytest.mark.slow  # ~1,000 signed publishes: minutes on a loaded machine, no QEMU
def test_thousand_plans_second_publish_uploads_only_the_changed_one(
    tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    with faulty_proxy(registry) as proxy:
        root = tmp_path / "ws"
        paths = fleet(root, proxy.address, 1000)
        first = publish_workspace(load_config(root), env={})
        assert {o.status for o in first} == {"published"}
        assert len(first) == 1000

        paths[500].write_text(plan_text("changed"))
        git(root, "commit", "-q", "-am", "one plan changed")
        proxy.exchanges.clear()
        rc, report, err = cli_publish(root)
        assert rc == 0, err
        exchanges = list(proxy.exchanges)

    statuses = [o["status"] for o in report.values()]
    assert statuses.count("published") == 1 and statuses.count("unchanged") == 999
    assert report["p0500.hcl"]["status"] == "published"
    writes = [e for e in exchanges if e.method in ("PUT", "POST", "PATCH", "DELETE")]
    assert writes, "the changed plan was written"
    assert {e.path.split("/")[3] for e in writes} == {"p0500"}, "only the changed repo"
    uploads = [e for e in writes if e.method == "PUT" and "/blobs/uploads/" in e.path]
    assert 1 <= len(uploads) <= 3  # plan, its config (if new) and the signature payload
    # the one changed tag, as an independent client sees it
    ref = f"{registry.address}/cloudboot/p0500:latest"
    assert skopeo_digest(ref) == report["p0500.hcl"]["digest"]
    # off a terminal the progress is a few plain lines on stderr, no carriage returns
    assert "publishing: 1000/1000" in err and "\r" not in err


def _kernel(tmp: Path, registry: RunningRegistry, data: bytes) -> str:
    """Push a kernel artifact to ``kernels/k:1``; its digest."""
    (tmp / "kernel").write_bytes(data)
    ref = parse_ref(f"{registry.address}/kernels/k:1")
    return push_artifact(RegistryClient(), ref, "amd64", tmp / "kernel").digest


def _our_pins(registry: RunningRegistry, plan: str, digest: str, public: bytes) -> dict[str, str]:
    """The pins of the one signature by ``public`` on ``digest``, read independently."""
    ref = parse_ref(f"{registry.address}/cloudboot/{plan}")
    _, pairs = existing_signatures(RegistryClient(), ref, digest)
    key = cosign.load_public_key(public)
    (ours,) = [cosign.parse_payload(d) for d, sig in pairs if cosign.verify_signature(key, d, sig)]
    return ours.pins


def test_warm_publish_parses_no_unchanged_plan_yet_renews_a_moved_pin(
    tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged plan costs two HEADs (its tag, its signature tag) and no parse; a tag
    many plans name is looked up once; when that tag moves, every signature is renewed
    although no plan text is read again."""
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    parses: list[str] = []

    def counted(name: str, real: Callable[..., T]) -> Callable[..., T]:
        def wrapper(*args: Any, **kwargs: Any) -> T:
            parses.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(pins, "parse_plan", counted("pins", pins.parse_plan))
    monkeypatch.setattr(plancheck, "plan_check", counted("validation", plancheck.plan_check))
    old = _kernel(tmp_path, registry, b"kernel 1")
    with faulty_proxy(registry) as proxy:
        root = tmp_path / "ws"
        kernel = f"{proxy.address}/kernels/k:1"
        paths = fleet(root, proxy.address, 4, kernel)
        public = (root / "cosign.pub").read_bytes()
        cold = publish_workspace(load_config(root), env={})
        assert {o.status for o in cold} == {"published"}
        assert sorted(parses) == ["pins"] * 4 + ["validation"] * 4, "cold: each plan once"
        facts = PlanMemory(root / ".cloudboot" / "plan-facts", validator_fingerprint())
        assert [facts.pin_refs(p.read_bytes()) for p in paths] == [(kernel,)] * 4

        parses.clear()
        proxy.exchanges.clear()
        warm = publish_workspace(load_config(root), env={})
        assert {o.status for o in warm} == {"unchanged"}
        assert parses == [], "no unchanged plan's text was parsed"
        asked = sorted((e.method, e.path.split("/manifests/")[0]) for e in proxy.exchanges)
        plans = [f"/v2/cloudboot/p{n:04}" for n in range(4)]
        assert asked == sorted([("GET", "/v2/kernels/k")] + [("HEAD", p) for p in plans] * 2)

        new = _kernel(tmp_path, registry, b"kernel 2")
        renewed = publish_workspace(load_config(root), env={})
        assert parses == [], "a moved tag needs no plan parsed"
        assert [o.status for o in renewed] == ["published"] * 4
        for o in renewed:
            assert o.digest == next(c.digest for c in cold if c.plan == o.plan)  # same bytes
            assert _our_pins(registry, o.plan.removesuffix(".hcl"), str(o.digest), public) == {
                kernel: new
            }
    assert old != new


def test_deleted_plan_tag_is_left_and_reported_then_pruned(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    root = tmp_path / "ws"
    fleet(root, registry.address, 3)
    rc, report, err = cli_publish(root)
    assert rc == 0, err
    gone = f"{registry.address}/cloudboot/p0001:latest"
    digest = skopeo_digest(gone)
    assert digest == report["p0001.hcl"]["digest"]

    git(root, "rm", "-q", "plans/p0001.hcl")
    git(root, "commit", "-q", "-m", "drop p0001")
    rc, report, err = cli_publish(root)
    assert rc == 0, err
    assert report["p0001.hcl"]["status"] == "stale"
    assert report["p0001.hcl"]["digest"] == digest
    assert "--prune" in str(report["p0001.hcl"]["error"])
    assert skopeo_digest(gone) == digest, "a deleted plan's tag is left without --prune"

    rc, report, err = cli_publish(root, "--prune")
    assert rc == 0, err
    assert report["p0001.hcl"]["status"] == "pruned"
    assert skopeo_digest(gone) is None
    assert skopeo_digest(f"{registry.address}/cloudboot/p0000:latest") is not None
    # pruned once: the next run has nothing to say about it
    rc, report, err = cli_publish(root, "--prune")
    assert rc == 0, err
    assert "p0001.hcl" not in report


def test_validation_reports_every_invalid_plan_with_its_location(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    paths = []
    for n in range(120):
        path = plans / f"p{n:03}.hcl"
        bad = n in (7, 64, 119)
        path.write_text(plan_text(n) + ('bogus = "x"\n' if bad else ""))
        paths.append(path)
    found = check_plans(paths, PlanMemory(None, validator_fingerprint()))
    assert sorted(p.name for p in found.invalid) == ["p007.hcl", "p064.hcl", "p119.hcl"]
    assert re.match(rf"{re.escape(str(paths[64]))}:7:\d+: ", found.invalid[paths[64]])
    assert set(found.checked) == set(paths) - set(found.invalid)
    assert all(found.checked[p].data == p.read_bytes() for p in found.checked)


def test_validation_is_remembered_by_content_and_validator(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    good, bad = plans / "good.hcl", plans / "bad.hcl"
    good.write_text(plan_text(1))
    bad.write_text("target {")
    store = tmp_path / "validated"
    first = check_plans([good, bad], PlanMemory(store, "v1"))
    assert first.parsed == 2 and set(first.invalid) == {bad}
    again = check_plans([good, bad], PlanMemory(store, "v1"))
    assert again.parsed == 1, "only the invalid plan is parsed again"
    assert set(again.invalid) == {bad}
    other = check_plans([good, bad], PlanMemory(store, "v2"))
    assert other.parsed == 2, "another validator re-checks everything"
    good.write_text(plan_text(2))
    assert check_plans([good], PlanMemory(store, "v1")).parsed == 1
    # junk in the store is no entry (and does not make a plan valid)
    store.write_text("not-a-key\n" + "0" * 64 + "\n")
    assert check_plans([good, bad], PlanMemory(store, "v1")).parsed == 2


def test_plan_memory_reads_back_only_whole_lines(tmp_path: Path) -> None:
    store = tmp_path / "facts"
    memory = PlanMemory(store, "v1")
    memory.add(b"a", ("r/x:1",))
    memory.add(b"b")  # validated, pin refs not derived yet
    memory.save()
    again = PlanMemory(store, "v1")
    assert again.valid(b"a") and again.pin_refs(b"a") == ("r/x:1",)
    assert again.valid(b"b") and again.pin_refs(b"b") is None
    # an append cut short: the torn line is no entry, and the next save rewrites the file
    store.write_text(store.read_text() + again.key(b"c") + "\tr/y")
    torn = PlanMemory(store, "v1")
    assert not torn.valid(b"c")
    torn.add(b"c", ("r/z:1",))
    torn.save()
    assert PlanMemory(store, "v1").pin_refs(b"c") == ("r/z:1",)
    assert store.read_text().endswith("\n")


def test_batched_revisions_match_per_plan_revisions(tmp_path: Path) -> None:
    root = tmp_path / "repo" / "ws"
    (root / "plans" / "sub").mkdir(parents=True)
    names = ["a.hcl", "b c.hcl", "sub/d.hcl", "e.hcl"]
    for name in names[:3]:
        (root / "plans" / name).write_text(name)
    git(root.parent, "init", "-q", "-b", "main")
    git(root.parent, "add", ".")
    git(root.parent, "commit", "-q", "-m", "one")
    (root / "plans" / "a.hcl").write_text("a2")
    git(root.parent, "commit", "-q", "-am", "two")
    (root / "plans" / "sub" / "d.hcl").write_text("dirty")
    (root / "plans" / "e.hcl").write_text("untracked")
    batched = fleet_annotations(root, root / "plans", {})
    for name in names:
        plan = root / "plans" / name
        expected = plan_revision(root, plan)
        assert batched(plan).get("org.opencontainers.image.revision") == expected, name
    assert str(plan_revision(root, root / "plans" / "sub" / "d.hcl")).endswith("-dirty")


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    bar, lines = (
        Progress("publishing", 40, tty, tty=True),
        Progress("publishing", 40, plain, tty=False),
    )
    for _ in range(40):
        bar.advance()
        lines.advance()
    bar.done()
    assert tty.getvalue().startswith("\rpublishing [") and tty.getvalue().endswith("40/40\n")
    assert "\r" not in plain.getvalue()
    assert plain.getvalue().splitlines()[-1] == "publishing: 40/40"
    assert len(plain.getvalue().splitlines()) <= 11


def test_prune_with_mirrors_is_refused_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    root = tmp_path / "ws"
    write_signed_workspace(root, "127.0.0.1:1")
    toml = root / "cloudboot.toml"
    toml.write_text(toml.read_text() + '\n[publish]\nmirrors = ["127.0.0.1:2"]\n')
    with pytest.raises(
        CloudbootError, match=r"\[publish\]\.mirrors cannot be combined with a canary or --prune"
    ):
        publish_workspace(load_config(root), env={}, prune=True)
