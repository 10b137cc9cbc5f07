"""One plan loader: the same bad byte gives the same located error on every path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guest.contract.errors import CloudbootError
from guest.contract.oci import parse_ref
from guest.contract.plan import PlanError, plan_text, read_plan_text
from guest.contract.plan.validate import Report, check_plan
from publisher import plancheck
from publisher.config import load_config
from publisher.localregistry import RunningRegistry
from publisher.plancheck import InvalidPlanError
from publisher.push import publish_plan
from publisher.registry import RegistryClient
from publisher.signing import generate_key_pair, parse_private_key
from publisher.workspace import PlanPublisher, publish_workspace
from tests.helpers import write_signed_workspace

BIN = Path(sys.executable).parent
#: "\xff" is at byte offset 34: line 2, column 14.
BAD = b'default_target = "a"\nlocal { x = "\xff" }\n'
EXPECTED = "2:14: not UTF-8 text (byte offset 34)"


@pytest.fixture
def bad_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plans" / "bad.hcl"
    plan.parent.mkdir()
    plan.write_bytes(BAD)
    return plan


def test_guest_side_loader_locates_the_byte(bad_plan: Path) -> None:
    with pytest.raises(PlanError) as err:
        plan_text(BAD, "oci://r/p")
    assert str(err.value) == f"oci://r/p:{EXPECTED}"
    with pytest.raises(PlanError) as err:
        read_plan_text(bad_plan)
    assert str(err.value) == f"{bad_plan}:{EXPECTED}"


def test_unreadable_plan_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as err:
        read_plan_text(tmp_path / "missing.hcl")
    assert str(err.value).startswith(f"{tmp_path / 'missing.hcl'}: cannot read plan: ")


def test_cli_validate_says_the_same(bad_plan: Path) -> None:
    proc = subprocess.run(
        [BIN / "cloudboot", "plan", "validate", bad_plan], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stdout.strip() == f"{bad_plan}:{EXPECTED}"


def test_push_says_the_same_before_sending_anything(bad_plan: Path) -> None:
    # nothing listens on port 9: any request would fail differently
    with pytest.raises(InvalidPlanError) as err:
        publish_plan(RegistryClient(), parse_ref("127.0.0.1:9/me/p:t"), bad_plan)
    assert [str(e) for e in err.value.errors] == [f"{bad_plan}:{EXPECTED}"]


def test_watcher_publisher_says_the_same(bad_plan: Path) -> None:
    root = bad_plan.parent.parent
    (root / "cloudboot.toml").write_text('[registry]\nurl = "127.0.0.1:9"\n')
    private, _ = generate_key_pair(b"")
    publisher = PlanPublisher(load_config(root), RegistryClient(), parse_private_key(private, b""))
    with pytest.raises(CloudbootError) as err:
        publisher.publish(bad_plan)
    assert str(err.value) == f"{bad_plan}:{EXPECTED}"


def test_publish_validates_each_plan_once(
    tmp_path: Path, shared_registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cloudboot publish` checks all plans first and publishes the checked bytes."""
    root = tmp_path / "ws"
    write_signed_workspace(root, shared_registry.address)
    (root / "cloudboot.toml").write_text(
        f'[registry]\nurl = "{shared_registry.address}"\n'
        f'[publish]\nref = "{{registry}}/once-{tmp_path.name}/{{name}}:latest"\n'
    )
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    seen: list[str] = []

    def counting(text: str, source: str, *, upstream: bool = False) -> Report:
        seen.append(source)
        return check_plan(text, source, upstream=upstream)

    monkeypatch.setattr(plancheck, "plan_check", counting)
    outcomes = publish_workspace(load_config(root), env={})
    assert [o.status for o in outcomes] == ["published"]
    assert seen == [str(root / "plans" / "demo.hcl")]
