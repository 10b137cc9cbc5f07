"""A small QMP (QEMU Machine Protocol) client over the unix socket.

QMP is line-delimited JSON: a greeting, ``qmp_capabilities`` to leave negotiation mode,
then ``{"execute": ...}`` commands answered by ``{"return": ...}`` or ``{"error": ...}``,
with asynchronous ``{"event": ...}`` lines interleaved that we skip.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from guest.contract.errors import CloudbootError


class QmpError(CloudbootError):
    """QEMU answered with an error, or the conversation broke off."""


class QmpClient:
    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        greeting = self._read_message()
        if "QMP" not in greeting:
            raise QmpError(f"{self.path}: not a QMP greeting: {greeting!r}")
        self.execute("qmp_capabilities")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value (events in between are skipped)."""
        if self._sock is None:
            raise QmpError("QMP client used outside its with-block")
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                err = message["error"]
                raise QmpError(f"QMP {command}: {err.get('class')}: {err.get('desc')}")
            # an event: keep reading for our answer

    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QmpError(f"{self.path}: QEMU closed the QMP connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QmpError(f"{self.path}: bad QMP line: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise QmpError(f"{self.path}: bad QMP message: {line[:80]!r}")
        return message
