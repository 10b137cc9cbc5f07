"""The watcher's state file (``.cloudboot/status.json``) and ``cloudboot status``.

The watcher rewrites the whole file atomically (temp file + rename) after every batch and
stage, so a reader never sees a half-written document and needs no socket or lock: last
event, last run of each stage with its duration and result, published digest per plan,
VM state. The pid in it tells a reader whether the writer is still alive.

Stages hand over typed outcomes (``watcher.watch.outcomes``); this module is the only
place they become JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from guest.contract.errors import CloudbootError
from guest.contract.fsutil import write_atomic
from watcher.vm.state import pid_alive
from watcher.watch.outcomes import Outcome, StageResult
from watcher.watch.reload import ReloadResult, format_result

STATUS_VERSION = 1
#: How many reload results ``cloudboot status`` keeps.
RELOADS_KEPT = 10


def iso_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def outcome_json(outcome: Outcome | None) -> dict[str, Any]:
    """A stage outcome's fields as JSON values: the status file's ``detail``, log fields."""
    if outcome is None:
        return {}
    return {f.name: _plain(getattr(outcome, f.name)) for f in fields(outcome)}


def stage_json(result: StageResult) -> dict[str, Any]:
    """One stage's entry in the status file."""
    return {
        "stage": result.stage,
        "subject": result.subject,
        "ok": result.ok,
        "duration_ms": round(result.duration_ms, 1),
        "started_at": result.started_at,
        "detail": outcome_json(result.outcome),
        "error": result.error,
        "result": "ok" if result.ok else "error",
    }


class StatusBook:
    """The in-memory status document plus its atomic ``flush`` to disk (thread-safe)."""

    def __init__(
        self, path: Path, *, watching: list[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        now = iso_time(clock())
        self.data: dict[str, Any] = {
            "version": STATUS_VERSION,
            "pid": os.getpid(),
            "started_at": now,
            "updated_at": now,
            "state": "starting",
            "watching": watching,
            "events": 0,
            "batches": 0,
            "runs": 0,
            "last_event": None,
            "last_run": None,
            "stages": {},
            "plans": {},
            "vm": {"state": "unknown", "started_by_watcher": False},
            "reloads": [],
        }

    def set_state(self, state: str, *, flush: bool = True) -> None:
        with self._lock:
            self.data["state"] = state
        if flush:
            self.flush()

    def record_batch(self, last_path: str, events: int, at: float) -> None:
        with self._lock:
            self.data["events"] += events
            self.data["batches"] += 1
            self.data["last_event"] = {"path": last_path, "at": iso_time(at)}

    def record_run(self, started: float, duration_ms: float, ok: bool, stages: list[str]) -> None:
        with self._lock:
            self.data["runs"] += 1
            self.data["last_run"] = {
                "started_at": iso_time(started),
                "duration_ms": round(duration_ms, 1),
                "result": "ok" if ok else "error",
                "stages": stages,
            }

    def record_stage(self, result: StageResult) -> None:
        with self._lock:
            self.data["stages"][result.stage] = stage_json(result)

    def record_plan(self, rel: str, *, ref: str, digest: str | None, error: str | None) -> None:
        with self._lock:
            entry = self.data["plans"].setdefault(rel, {})
            entry["ref"] = ref
            if digest:
                entry["digest"] = digest
                entry["published_at"] = iso_time(self._clock())
            entry["last_error"] = error

    def record_vm(self, state: str, *, started_by_watcher: bool | None = None) -> None:
        with self._lock:
            self.data["vm"]["state"] = state
            if started_by_watcher is not None:
                self.data["vm"]["started_by_watcher"] = started_by_watcher

    def record_reload(self, result: ReloadResult) -> int:
        """Keep a reload's result (the newest :data:`RELOADS_KEPT`); returns its number."""
        with self._lock:
            number = int(self.data.get("reload_count", 0)) + 1
            self.data["reload_count"] = number
            entry = {"number": number, **result.to_json(), "at": iso_time(result.at)}
            self.data["reloads"] = [*self.data["reloads"], entry][-RELOADS_KEPT:]
        self.flush()
        return number

    def flush(self) -> None:
        with self._lock:
            self.data["updated_at"] = iso_time(self._clock())
            payload = json.dumps(self.data, indent=2, sort_keys=False).encode() + b"\n"
        write_atomic(self.path, payload)  # not durable: rewritten after every stage


def load_status(path: Path) -> dict[str, Any]:
    """Read a status file; a missing or unreadable one is a user-facing error naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CloudbootError(
            "no watcher status yet (start one with `cloudboot watch` or `cloudboot agent install`)",
            where=str(path),
        ) from None
    except (OSError, ValueError) as exc:
        raise CloudbootError(f"unreadable status file: {exc}", where=str(path)) from None
    if not isinstance(data, dict) or data.get("version") != STATUS_VERSION:
        raise CloudbootError(
            f"unsupported status file (expected version {STATUS_VERSION})", where=str(path)
        )
    return data


def with_liveness(data: dict[str, Any]) -> dict[str, Any]:
    """The status as read, plus ``alive``; a dead writer's ``running`` state becomes ``dead``."""
    out = dict(data)
    alive = isinstance(data.get("pid"), int) and pid_alive(data["pid"])
    out["alive"] = alive
    if not alive and data.get("state") not in ("stopped",):
        out["state"] = "dead"
    return out


def format_status(data: dict[str, Any]) -> str:
    """Human-readable ``cloudboot status`` (pure: takes what ``with_liveness`` returns)."""
    lines = [
        f"watcher: {data.get('state')} (pid {data.get('pid')}, since {data.get('started_at')})"
    ]
    lines.append(f"watching: {', '.join(data.get('watching') or []) or '-'}")
    last = data.get("last_event")
    lines.append(f"last event: {last['path']} at {last['at']}" if last else "last event: none yet")
    lines.append(f"events: {data.get('events', 0)}, runs: {data.get('runs', 0)}")
    for name in ("plan", "kernel", "vm"):
        stage = (data.get("stages") or {}).get(name)
        if stage:
            tail = f" - {stage['error']}" if stage.get("error") else ""
            lines.append(
                f"stage {name}: {stage['result']} in {stage['duration_ms']} ms "
                f"({stage['subject']}, {stage['started_at']}){tail}"
            )
        else:
            lines.append(f"stage {name}: not run")
    for rel, plan in sorted((data.get("plans") or {}).items()):
        digest = plan.get("digest") or "not published"
        err = f" (last attempt failed: {plan['last_error']})" if plan.get("last_error") else ""
        lines.append(f"plan {rel}: {plan.get('ref')}@{digest}{err}")
    vm = data.get("vm") or {}
    owner = " (started by the watcher)" if vm.get("started_by_watcher") else ""
    lines.append(f"vm: {vm.get('state', 'unknown')}{owner}")
    reloads = data.get("reloads") or []
    lines.append(f"last reloads: {'none yet' if not reloads else ''}".rstrip())
    for entry in reloads:
        lines.append(f"  {entry['at']} " + format_result(reload_from_json(entry), entry["number"]))
    return "\n".join(lines)


def reload_from_json(entry: Mapping[str, Any]) -> ReloadResult:
    """A kept reload back as a result, so ``status`` prints it as ``up`` did."""
    names = {f.name for f in fields(ReloadResult)} - {"at"}  # kept as ISO text
    return ReloadResult(**{k: v for k, v in entry.items() if k in names}, at=0.0)
