"""One call on another thread, its result or error handed to whoever waits for it.

The guest has two vCPUs and the agent's Python runs on one: work that mostly waits in the
kernel (module loads, DHCP, mounting and reading the cache ESP, kexec(8)) runs beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """One call on a daemon thread; ``wait`` returns its result or raises its error."""

    def __init__(self, call: Callable[[], T], after: Background[object] | None = None) -> None:
        self._call = call
        self._after = after
        self._result: T | None = None
        self._error: BaseException | None = None
        self.took = 0.0  # seconds the call itself ran (after waiting for ``after``)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._after is not None:
                self._after._thread.join()
            start = time.monotonic()
            self._result = self._call()
            self.took = time.monotonic() - start
        except BaseException as exc:  # handed to whoever waits
            self._error = exc

    def join(self, timeout: float | None) -> None:
        """Wait at most ``timeout`` for the call; its result stays for ``wait``."""
        self._thread.join(timeout)

    def done(self) -> bool:
        """Whether the call has ended (returned or raised)."""
        return not self._thread.is_alive()

    def wait(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
