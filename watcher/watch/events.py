"""The watchdog observer on ``plans/`` and ``kernel/``, reduced to a stream of paths.

Every create/modify/close-after-write/delete/move (both ends) becomes one path handed to a
sink (the debounce queue); opens, reads and directory mtime changes are dropped, and so is
anything ``IgnoreRules`` rejects. What a path *means* is decided later by the pipeline.

A watch on a directory dies with the directory: ``rm -rf plans && git checkout plans``,
``mv plans plans.old && cp -r plans.old plans``, or a ``kernel/`` made after the watcher
started would leave it running and blind. So each watched directory's parent is watched
too (not recursively, only for that directory's name), and the directory's own watch is
dropped when it goes and made again when it comes back; the directory itself is then
reported as changed, which the pipeline reads as "every file below it, and every one it
knew there" (``Pipeline._expand``).
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
from watchdog.observers.api import BaseObserver, ObservedWatch

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


class TreeKeeper(FileSystemEventHandler):
    """Keeps one recursive watch per directory in ``dirs`` while it exists (see above).

    It gets the parents' events, from the observer's dispatch thread (whose lock is
    reentrant, so scheduling from here is allowed).
    """

    def __init__(
        self, observer: BaseObserver, handler: WorkspaceEventHandler, dirs: Sequence[Path]
    ) -> None:
        super().__init__()
        self.observer = observer
        self.handler = handler
        self.watches: dict[Path, ObservedWatch | None] = {d: None for d in dirs}

    def keep(self, directory: Path, *, again: bool = False) -> None:
        """Watch ``directory`` if it is there now, dropping any watch it had before."""
        old = self.watches[directory]
        if old is not None:
            self.observer.unschedule(old)
            self.watches[directory] = None
        if directory.is_dir():
            target = os.fspath(directory.resolve())
            self.watches[directory] = self.observer.schedule(self.handler, target, recursive=True)
            if again:
                log.info("watching again", path=str(directory))
        elif again:
            log.warning("the watched directory is gone; watching for it", path=str(directory))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in (EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = Path(os.fsdecode(raw)) if raw else None
            if path is not None and path in self.watches:
                self.keep(path, again=True)
                self.handler.sink(path)  # the pipeline looks at everything below it


@contextmanager
def observe(
    root: Path, dirs: Sequence[Path], rules: IgnoreRules, sink: PathSink
) -> Iterator[WorkspaceEventHandler]:
    """Watch ``dirs`` (recursively) until the block ends; yields the handler.

    A directory that does not exist is reported and watched for rather than fatal: a
    workspace with plans but no kernel recipe is normal, and one may be made later.
    """
    resolved = root.resolve()
    handler = WorkspaceEventHandler(resolved, rules, sink)
    observer = Observer()
    # Named as the parent's watch names them: the parent resolved, the directory not.
    absolute = [d.parent.resolve() / d.name for d in dirs]
    keeper = TreeKeeper(observer, handler, absolute)
    for directory in absolute:
        keeper.keep(directory)
        if not directory.is_dir():
            log.warning("not watching a missing directory until it exists", path=str(directory))
    for parent in sorted({d.parent for d in absolute if d.parent.is_dir()}):
        observer.schedule(keeper, os.fspath(parent), recursive=False)
    observer.daemon = True
    observer.start()
    log.debug("observer started", dirs=[str(d) for d in absolute])
    try:
        yield handler
    finally:
        observer.stop()
        observer.join(timeout=5)
