"""Which ref each plan file publishes to, and the rule that makes it safe: one ref per plan.

Two plans that map to one ref (an entry in ``[publish].refs``, a symlinked plan file,
``sub/default.hcl`` next to ``sub-default.hcl``) would each "publish" and the tag would
flip between them on every run, so the whole set is refused before anything is pushed.
An entry in ``[publish].refs`` for a plan that does not exist and a dangling symlink in
plans/ are refused too: both are typos a user wants to hear about.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from guest.contract.errors import CloudbootError
from publisher.config import Config, ConfigError

PLACEHOLDERS = ("registry", "name")


def plan_ref(config: Config, plan_file: Path, plans: Path | None = None) -> str:
    """The ref ``plan_file`` publishes to, with errors that name the plan or the key.

    ``plans``: plans/ already resolved (a fleet's run resolves it once, not per plan: path
    resolution was the largest cost of a warm publish after the registry's HEADs).
    """
    if str(plan_file) == "-":
        raise CloudbootError(
            "a plan read from stdin has no ref from cloudboot.toml: pass the target REF"
            " (cloudboot push plan REF -f -)"
        )
    plans = plans or config.plans_dir.resolve()
    try:
        rel = plan_file.resolve().relative_to(plans).as_posix()
    except ValueError:
        raise CloudbootError(
            f"plan is outside {config.plans_dir}, so it has no ref from cloudboot.toml:"
            " pass the target REF (cloudboot push plan REF -f FILE)",
            where=str(plan_file),
        ) from None
    try:
        return config.ref_for(rel)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"[publish].ref: bad placeholder in {config.publish.ref!r} ({exc}):"
            f" the placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}",
            where=str(config.source or "cloudboot.toml"),
        ) from None


def _label(config: Config, plan: Path) -> str:
    text = plan.relative_to(config.root).as_posix() if plan.is_relative_to(config.root) else plan
    return f"{text} (a symlink to {plan.resolve().name})" if plan.is_symlink() else str(text)


def check_plan_refs(config: Config, plans: Sequence[Path]) -> dict[Path, str]:
    """Each plan's ref; raises when two plans share one or the config names a missing plan."""
    where = str(config.source or "cloudboot.toml")
    for rel in config.publish.refs:
        if not (config.plans_dir / rel).is_file():
            raise ConfigError(
                f'[publish].refs["{rel}"]: no such plan in {config.plans_dir.name}/:'
                " fix the name or remove the entry",
                where=where,
            )
    if config.plans_dir.is_dir():
        for path in sorted(config.plans_dir.rglob("*.hcl")):
            if path.is_symlink() and not path.exists():
                raise CloudbootError(
                    "dangling symlink in plans/: fix or remove it", where=str(path)
                )
    refs: dict[Path, str] = {}
    owners: dict[str, Path] = {}
    resolved = config.plans_dir.resolve()
    for plan in plans:
        ref = plan_ref(config, plan, resolved)
        if ref in owners:
            raise CloudbootError(
                f"{_label(config, owners[ref])} and {_label(config, plan)} would both publish"
                f" to {ref}: give one of them its own ref in [publish].refs (or rename it)"
            )
        owners[ref] = plan
        refs[plan] = ref
    return refs
