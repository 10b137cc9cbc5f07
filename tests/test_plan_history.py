"""`cloudboot plan history|diff|rollback` against a real docker-registry, in a git checkout.

The rollback is judged by the guest's own code: guest.agent.fetch pulls and verifies the
plan the tag points at, and guest.agent.floor compares its version with the floor a guest
kept after booting the newest publication. A rollback that only moved the tag (the old
signature) fails that check; a real one passes it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from guest.agent import floor
from guest.agent.fetch import RegistryClient as GuestClient
from guest.agent.pulls import pull_plan, verify_signature
from guest.contract import cosign
from guest.contract.oci import parse_ref
from publisher.localregistry import RunningRegistry
from tests.helpers import CLOUDBOOT, PLAN, skopeo_digest, write_signed_workspace
from tests.test_gitops import git

ENV = {**os.environ, "COSIGN_PASSWORD": "pw"}


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLOUDBOOT), "-C", str(root), *args], capture_output=True, text=True, env=ENV
    )


def cli_json(root: Path, *args: str) -> dict[str, object]:
    proc = cli(root, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def guest_view(ref: str, public: bytes) -> tuple[bytes, cosign.SignedPayload]:
    """What a guest fetches and verifies at ``ref`` (the guest's own fetch code)."""
    client = GuestClient()
    target = parse_ref(ref)
    resolved, plan = pull_plan(client, target, "amd64")
    signed = verify_signature(client, target, resolved.top_digest, cosign.load_public_key(public))
    return plan, signed


@pytest.fixture
def published(tmp_path: Path, registry: RunningRegistry) -> tuple[Path, bytes, list[str], str]:
    """Three commits of demo.hcl, each published: (root, public key, digests, ref)."""
    root = tmp_path / "ws"
    public = write_signed_workspace(root, registry.address)
    (root / ".gitignore").write_text("cosign.key\n.cloudboot/\n")
    git(root, "init", "-q", "-b", "main")
    ref = f"{registry.address}/cloudboot/demo:latest"
    digests = []
    for n in (1, 2, 3):
        (root / "plans" / "demo.hcl").write_text(PLAN.replace("v=1", f"v={n}"))
        git(root, "add", ".")
        git(root, "commit", "-q", "-m", f"v{n}")
        proc = cli(root, "publish")
        assert proc.returncode == 0, proc.stderr
        digest = skopeo_digest(ref)
        assert digest
        digests.append(digest)
    return root, public, digests, ref


def test_history_lists_every_publication_with_revision_and_signer(
    published: tuple[Path, bytes, list[str], str],
) -> None:
    root, _, digests, ref = published
    doc = cli_json(root, "plan", "history", ref)
    assert doc["current"] == digests[-1]
    entries = doc["entries"]
    assert isinstance(entries, list)
    assert [e["digest"] for e in entries] == digests[::-1]
    revisions = git(root, "log", "--format=%H", "--", "plans/demo.hcl").split()
    assert [e["revision"] for e in entries] == revisions
    assert all(e["kind"] == "plan" for e in entries)
    assert entries[0]["tags"] == ["latest"]
    pub = str(root / "cosign.pub")
    assert all({s["key"] for s in e["signers"]} == {pub} for e in entries)
    versions = [e["version"] for e in entries]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == 3
    assert doc["blind_spots"]
    text = cli(root, "plan", "history", ref).stdout
    assert text.startswith(f"{ref} -> {digests[-1]}") and "Not visible here:" in text


def test_diff_of_refs_digests_and_files(
    published: tuple[Path, bytes, list[str], str], tmp_path: Path
) -> None:
    root, _, digests, ref = published
    doc = cli_json(root, "plan", "diff", digests[0], ref)
    assert doc["same"] is False
    text = doc["text"]
    assert isinstance(text, list)
    assert '-  cmdline = ["console=ttyS0", "v=1"]' in text
    assert '+  cmdline = ["console=ttyS0", "v=3"]' in text
    targets = doc["targets"]
    assert isinstance(targets, dict) and set(targets) == {"amd64", "arm64"}
    assert any("v=1" in line and line.startswith("-") for line in targets["amd64"])

    # the file as committed is what the tag holds
    same = cli_json(root, "plan", "diff", str(root / "plans" / "demo.hcl"), ref)
    assert same["same"] is True

    # a comment changes the text, not one rendered target
    commented = tmp_path / "commented.hcl"
    commented.write_text("# why v=3\n" + (root / "plans" / "demo.hcl").read_text())
    doc = cli_json(root, "plan", "diff", ref, str(commented))
    assert doc["text"] and doc["targets"] == {"amd64": [], "arm64": []}

    proc = cli(root, "plan", "diff", "nosuchfile.hcl", ref)
    assert proc.returncode != 0 and "nosuchfile.hcl" in proc.stderr


def test_rollback_is_a_fresher_signed_publish_the_guest_accepts(
    published: tuple[Path, bytes, list[str], str],
) -> None:
    root, public, digests, ref = published
    _, newest = guest_view(ref, public)
    floors = {ref: newest.version or 0}  # a guest booted the newest publication

    # the attack the floor exists for: the tag moved back with the old signature
    repo = ref.rsplit(":", 1)[0]
    proc = cli(root, "promote", f"{repo}@{digests[0]}", ref, "--no-sign")
    assert proc.returncode != 0 and skopeo_digest(ref) == digests[-1]

    doc = cli_json(root, "plan", "rollback", ref, "--to", "-2")
    assert doc["digest"] == digests[0] and doc["previous"] == digests[-1]
    assert skopeo_digest(ref) == digests[0]
    plan, signed = guest_view(ref, public)
    assert b'"v=1"' in plan
    check = floor.check(floors, ref, signed.version)
    assert not check.stale, check

    history = cli_json(root, "plan", "history", ref)
    entries = history["entries"]
    assert isinstance(entries, list)
    assert [e["digest"] for e in entries] == [digests[0], digests[2], digests[1]]

    proc = cli(root, "plan", "rollback", ref, "--to", "sha256:" + "0" * 64)
    assert proc.returncode != 0 and "not a signed publication" in proc.stderr
    proc = cli(root, "plan", "rollback", ref, "--to", "-9")
    assert proc.returncode != 0 and "publication(s) before" in proc.stderr
    assert skopeo_digest(ref) == digests[0]
