"""The kernel stage: rebuild UKI + boot.iso from ``kernel/`` with the media builder.

The recipe is re-read on every build (it is one of the files being edited); the builder
itself is incremental (an input fingerprint next to the image) and renames the finished
image into place, so a failed build leaves the previous boot.iso for the running VM.
"""

from __future__ import annotations

from publisher.config import Config
from publisher.media.build import build_boot_iso
from publisher.media.recipe import load_recipe
from publisher.registry import client_from_config
from publisher.signing import SigningKey
from watcher.watch.outcomes import BuildOutcome


class MediaBuildStage:
    def __init__(self, config: Config, key: SigningKey | None) -> None:
        self.config = config
        self.key = key
        self.arches = config.media_arches()

    def build(self) -> BuildOutcome:
        recipe = load_recipe(self.config.build.recipe)
        result = build_boot_iso(
            recipe,
            self.config.build.iso,
            self.arches,
            signing_key=self.key,
            # an OCI kernel source honours the workspace's registry settings (TLS, CA, auth)
            registry=lambda: client_from_config(self.config.registry),
        )
        timings = {name: round(seconds * 1000, 1) for name, seconds in result.timings.items()}
        return BuildOutcome(
            result.output,
            changed=not result.skipped,
            size=result.size,
            signed=result.signature is not None,
            steps_ms=timings,
        )
