"""The watchdog observer on ``plans/`` and ``kernel/``, reduced to a stream of paths.

Every create/modify/close-after-write/delete/move (both ends) becomes one path handed to a
sink (the debounce queue); opens, reads and directory mtime changes are dropped, and so is
anything ``IgnoreRules`` rejects. What a path *means* is decided later by the pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from publisher.ignore import IgnoreRules

log = structlog.get_logger(__name__)

PathSink = Callable[[Path], None]

_RELEVANT = frozenset(
    {
        EVENT_TYPE_CREATED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_CLOSED,
    }
)


class WorkspaceEventHandler(FileSystemEventHandler):
    """Filters watchdog events and forwards the paths that matter to ``sink``."""

    def __init__(self, root: Path, rules: IgnoreRules, sink: PathSink) -> None:
        super().__init__()
        self.root = root
        self.rules = rules  # replaced wholesale on a config reload (an atomic swap)
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _RELEVANT:
            return
        if event.is_directory and event.event_type in (EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED):
            return  # a directory's mtime moved because a child changed: the child reports
        self._forward(event.src_path, event.is_directory)
        if event.event_type == EVENT_TYPE_MOVED and event.dest_path:
            self._forward(event.dest_path, event.is_directory)

    def _forward(self, raw: bytes | str, is_dir: bool) -> None:
        path = Path(os.fsdecode(raw))
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return
        if not self.rules.is_ignored(rel, is_dir=is_dir):
            self.sink(path)


@contextmanager
def observe(
    root: Path, dirs: Sequence[Path], rules: IgnoreRules, sink: PathSink
) -> Iterator[WorkspaceEventHandler]:
    """Watch ``dirs`` (recursively) until the block ends; yields the handler.

    Directories that do not exist are reported and skipped rather than fatal: a
    workspace with plans but no kernel recipe is normal.
    """
    handler = WorkspaceEventHandler(root.resolve(), rules, sink)
    observer = Observer()
    watched = []
    for directory in dirs:
        if directory.is_dir():
            observer.schedule(handler, os.fspath(directory.resolve()), recursive=True)
            watched.append(str(directory))
        else:
            log.warning("not watching a missing directory", path=str(directory))
    observer.daemon = True
    observer.start()
    log.debug("observer started", dirs=watched)
    try:
        yield handler
    finally:
        observer.stop()
        observer.join(timeout=5)
