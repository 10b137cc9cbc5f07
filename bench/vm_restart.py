"""How long the VM lifecycle takes through the backends, against a bare QEMU start.

The watcher calls ``restart(reset_nvram=True)`` after every publish, so what matters is
how much our layer (firmware lookup, vars copy, detached launch, pidfile + control
socket handshake, hard stop of a guest that ignores ACPI) adds on top of QEMU itself.

- baseline: QEMU started through ``publisher.run.spawn`` with the same argv, timed until
  its QMP socket answers, then stopped;
- ours (qemu): ``up()``, ``restart(reset_nvram=True, stop_timeout=0)`` and ``down(0)``;
- ours (vfkit stand-in): the same through the vfkit code path (stand-in + QEMU).

Nothing boots: the firmware alone runs (TCG), as in the tests.
Run: .venv/bin/python bench/vm_restart.py [--runs N] [--quick] [--json PATH]
(runs default to 3, or 1 with ``--quick``; ``--json``: rows for bench/report.py)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from bench.results import Row, add_report_options, emit  # noqa: E402
from publisher.config import Accel, Backend  # noqa: E402
from publisher.run import spawn  # noqa: E402
from tests.helpers import make_spec  # noqa: E402
from watcher.vm import open_backend  # noqa: E402
from watcher.vm.firmware import find_firmware  # noqa: E402
from watcher.vm.nvram import restore_template  # noqa: E402
from watcher.vm.qemu import qemu_argv  # noqa: E402
from watcher.vm.spec import VmSpec  # noqa: E402


def spec_in(directory: Path, kind: Backend) -> VmSpec:
    """The lifecycle tests' VM (blank disks, firmware only) in a directory of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    return make_spec(directory, kind)


def qmp_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            return b"QMP" in sock.recv(4096)
    except OSError:
        return False


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def baseline(spec: VmSpec, runs: int) -> list[float]:
    firmware = find_firmware(spec.arch)
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    restore_template(spec.nvram, firmware.vars_template)
    argv = qemu_argv(spec, firmware, accel=Accel.TCG)
    out = []
    for _ in range(runs):
        spec.control_socket.unlink(missing_ok=True)
        start = time.perf_counter()
        with spawn(argv, grace=0.5):
            while not qmp_answers(spec.control_socket):
                time.sleep(0.01)
            out.append(time.perf_counter() - start)
    return out


def ours(spec: VmSpec, runs: int) -> dict[str, list[float]]:
    backend = open_backend(spec)
    results: dict[str, list[float]] = {"up": [], "restart --reset-nvram": [], "down": []}
    for _ in range(runs):
        results["up"].append(timed(backend.up))
        results["restart --reset-nvram"].append(
            timed(lambda: backend.restart(True, stop_timeout=0))
        )
        results["down"].append(timed(lambda: backend.down(0)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="default 3 (--quick: 1)")
    add_report_options(parser)
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(30),  # warnings and up
    )
    os.environ.setdefault("CLOUDBOOT_VFKIT", str(REPO / "tests/vfkit_standin/vfkit"))
    with tempfile.TemporaryDirectory(prefix="cb-bench-") as tmp:
        root = Path(tmp)
        base = statistics.median(baseline(spec_in(root / "baseline", Backend.QEMU), args.runs))
        rows = []
        print(f"baseline  bare QEMU start to QMP answer        {base * 1000:8.1f} ms")
        for kind in (Backend.QEMU, Backend.VFKIT):
            for name, values in ours(spec_in(root / kind.value, kind), args.runs).items():
                med = statistics.median(values)
                print(
                    f"{kind.value:6s}    {name:38s} {med * 1000:8.1f} ms"
                    f"   x{med / base:5.2f} of baseline"
                )
                backend = "vfkit stand-in" if kind is Backend.VFKIT else kind.value
                rows.append(Row(5, f"{backend}: {name} (median)", med * 1000, "ms",
                                "bare QEMU start to QMP answer", base * 1000))  # fmt: skip
    emit(rows, args.json)


if __name__ == "__main__":
    main()
