"""Ports and child processes of the sandbox: bind to 127.0.0.1, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on ``address`` that nothing listens on right now (bound a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def stop_group(process: subprocess.Popen[bytes], *, kill: bool = False,
               timeout: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it spawned.

    SIGTERM first (a clean shutdown), SIGKILL if it is still there after ``timeout``, or at
    once when ``kill`` is set (to simulate a crash).
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Service(ABC):
    """Something the sandbox starts and must stop: ``with`` starts it, and stops it on exit,
    or at once when starting fails half-way (a partial start leaves nothing behind)."""

    @abstractmethod
    def start(self) -> None:
        """Start, returning once ready."""

    @abstractmethod
    def stop(self) -> None:
        """Stop by PID and undo what start changed; safe after a partial start."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
