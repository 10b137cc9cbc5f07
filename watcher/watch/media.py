"""The kernel stage: rebuild UKI + boot.iso from ``kernel/`` with the media builder.

The recipe is re-read on every build (it is one of the files being edited); the builder
itself is incremental (an input fingerprint next to the image) and renames the finished
image into place, so a failed build leaves the previous boot.iso for the running VM.
"""

from __future__ import annotations

import structlog

from publisher.config import Config
from publisher.media.build import build_from_config
from publisher.signing import SigningKey
from watcher.watch.outcomes import BuildOutcome

log = structlog.get_logger(__name__)


class BuildProgress:
    """A line as each build step starts, so a terminal shows a rebuild moving (the builder
    calls back when a step starts and again when it ends)."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self.last:
            self.last = step
            log.info("boot.iso build", step=step, of=f"{done + 1}/{total}")


class MediaBuildStage:
    def __init__(self, config: Config, key: SigningKey | None) -> None:
        self.config = config
        self.key = key

    def build(self) -> BuildOutcome:
        result = build_from_config(self.config, self.key, progress=BuildProgress())
        timings = {name: round(seconds * 1000, 1) for name, seconds in result.timings.items()}
        return BuildOutcome(
            result.output,
            changed=not result.skipped,
            size=result.size,
            signed=result.signature is not None,
            steps_ms=timings,
        )
