"""VM control: QEMU (Linux) and vfkit (macOS) backends, NVRAM reset, supervision.

Callers (the CLI, the watcher, end-to-end tests) use ``VmSpec.from_config`` and
``open_backend``; the backend classes behind it are interchangeable.
"""

from __future__ import annotations

from publisher.config import Backend
from watcher.vm.spec import VmError, VmSpec
from watcher.vm.status import VmBackend, VmState, VmStatus


def open_backend(spec: VmSpec) -> VmBackend:
    """The backend ``spec.backend`` names; it finds an already running VM by itself."""
    if spec.backend is Backend.VFKIT:
        from watcher.vm.vfkit import VfkitBackend

        return VfkitBackend(spec)
    from watcher.vm.qemu import QemuBackend

    return QemuBackend(spec)


__all__ = ["VmBackend", "VmError", "VmSpec", "VmState", "VmStatus", "open_backend"]
