"""Shared fixtures: real registries, workspaces, and the --skip-slow switch.

The slow tests boot real firmware and kernels under QEMU TCG. They run by default (CI
runs everything); pass ``--skip-slow`` (or set CLOUDBOOT_SKIP_SLOW=1) to skip them locally.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

from publisher.localregistry import RunningRegistry, local_registry


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-slow",
        action="store_true",
        default=False,
        help="skip tests marked slow (QEMU boots); CI runs them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    schedule_slow_modules_first(items)
    if not (config.getoption("--skip-slow") or os.environ.get("CLOUDBOOT_SKIP_SLOW") == "1"):
        return
    skip = pytest.mark.skip(reason="slow QEMU boot skipped (--skip-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def schedule_slow_modules_first(items: list[pytest.Item]) -> None:
    """Order for parallel runs (``./bootstrap test`` runs pytest-xdist, ``--dist
    loadgroup``): a module with QEMU boots is one unit of work, kept on one worker so its
    module-scoped lab (registry, boot.iso, disks) is built once, and the modules with the
    most boots go first, so the many short tests fill the workers' tails instead of one
    long module running alone at the end. The order inside a module is kept."""
    module = {item: item.nodeid.split("::")[0] for item in items}
    boots = Counter(module[item] for item in items if "slow" in item.keywords)
    rank = {name: i for i, (name, _) in enumerate(boots.most_common())}
    for item in items:
        if module[item] in boots:
            item.add_marker(pytest.mark.xdist_group(module[item]))
    items.sort(key=lambda item: rank.get(module[item], len(rank)))  # stable: order kept


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A fresh docker-registry on a free loopback port, plain HTTP, no auth."""
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """One registry for the whole session, for tests that only add uniquely named repos."""
    with local_registry(tmp_path_factory.mktemp("shared-registry")) as reg:
        yield reg


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults and no pending configuration.

    A command run in-process (click's runner) configures structlog for the whole process
    (INFO, stderr as it was then) or leaves a one-shot import hook that configures it
    later (watcher/cli/logsetup.py): without this reset, a later test on the same worker
    saw its debug events filtered out, depending on which tests ran before it (pytest-xdist
    made that order vary).
    """
    yield
    import sys

    from watcher.cli.logsetup import forget_pending

    forget_pending()
    if "structlog" in sys.modules:
        sys.modules["structlog"].reset_defaults()
