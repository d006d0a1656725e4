"""The machine-wide lock on the sandbox node, and who holds it.

Only one sandbox node can run on a machine (one bridge, one set of kubelet paths). A second
sandbox used to queue on the lock silently; now the holder writes who it is into the lock file
(PID, what it is, since when, where its kubeconfig is), so a waiter can say what it waits for.
A kept sandbox (``make sandbox``) does not end on its own: waiting for it would hang, so a
newcomer is refused at once with the way to use or stop it.

The lock file lives in ``/run``, which is per mount namespace, but the bridge and the NAT rules
are per network namespace: two containers sharing one network (CI beside a developer's shell)
see different lock files and one bridge. So the holder also binds an abstract Unix socket,
whose name is scoped to the network namespace and freed by the kernel when its process dies.
Holding both means no live sandbox shares this network: a bridge found then is a killed
sandbox's leftover, safe to take over (NodeHost does). The holder also answers on that socket
with its record, so a newcomer in another container can say what it waits for, and is refused
at once by a kept sandbox there as it is by one here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

LOCK_FILE = Path("/run/stagewright-sandbox-node.lock")
#: The abstract socket's name (no file: Linux scopes it to the network namespace).
NETWORK_LOCK = "stagewright-sandbox-node"
NETWORK_LOCK_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Holder:
    """Who holds the node: written into the lock file by the holder."""

    pid: int
    #: What runs it, for people: ``make sandbox``, ``make test (pytest)``, ``make demo``.
    purpose: str
    since: str
    #: True for ``make sandbox``: it stays up until stopped, so nobody should wait for it.
    kept: bool = False
    kubeconfig: str = ""

    def describe(self) -> str:
        """One line naming the holder."""
        alive = _alive(self.pid)
        return (f"{self.purpose} (PID {self.pid}, since {self.since}"
                f"{'' if alive else ', no longer running: its lock is being released'})")


class NodeBusyError(RuntimeError):
    """The node is held by a kept sandbox; the message says how to use or stop it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path = LOCK_FILE) -> Holder | None:
    """The current holder as its lock file says, or None (free, or an unreadable record)."""
    try:
        return _holder_from(path.read_text())
    except OSError:
        return None


def _holder_from(text: str | bytes) -> Holder | None:
    """A holder's record as it wrote it, or None when it is empty or unreadable."""
    try:
        record = json.loads(text or "null")
        return Holder(**record) if isinstance(record, dict) else None
    except (ValueError, TypeError):
        return None


class HostLock:
    """``with HostLock(purpose):`` holds the node; a busy node is waited for or refused."""

    def __init__(self, purpose: str, *, kept: bool = False, kubeconfig: str = "",
                 notify: Callable[[str], None] | None = None, path: Path = LOCK_FILE,
                 network_lock: str = NETWORK_LOCK) -> None:
        self.record = Holder(pid=os.getpid(), purpose=purpose,
                             since=_now(),
                             kept=kept, kubeconfig=kubeconfig)
        #: Tells the person running this what the node is waiting for or taking over.
        self.notify = notify or (lambda _message: None)
        self._path = path
        self._network_lock = network_lock
        self._file: IO[str] | None = None
        self._socket: socket.socket | None = None
        #: How long the lock was waited for (another sandbox's node ran meanwhile).
        self.waited_seconds = 0.0

    def acquire(self) -> None:
        """Take the lock: at once when free; after the holder stops when it is a transient
        one (a test run, a demo), saying so; never behind a kept sandbox (NodeBusyError)."""
        started = time.monotonic()
        lock = self._path.open("a+")
        try:
            if not _try_lock(lock):
                holder = read_holder(self._path)
                if holder is not None and holder.kept and _alive(holder.pid):
                    raise NodeBusyError(
                        f"the sandbox node is held by {holder.describe()}: use it "
                        f"(KUBECONFIG={holder.kubeconfig}, or `. .sandbox/env`), or stop it "
                        "with `make sandbox-down` (or Ctrl-C where it runs)")
                what = holder.describe() if holder is not None else "another process"
                self.notify(f"The sandbox node is held by {what}; waiting for it to stop "
                            "(one node per machine).")
                fcntl.flock(lock, fcntl.LOCK_EX)
            self._socket = self._hold_network()
            # Since when it holds the node, not since when it asked.
            self.record = replace(self.record, since=_now())
            record = json.dumps(asdict(self.record))
            lock.seek(0)
            lock.truncate()
            lock.write(record)
            lock.flush()
            threading.Thread(target=_answer_with, args=(self._socket, record.encode()),
                             name="sandbox-lock-holder", daemon=True).start()
        except BaseException:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            lock.close()
            raise
        self._file = lock
        self.waited_seconds = time.monotonic() - started

    def _hold_network(self) -> socket.socket:
        """Bind the network-wide lock, polling while a sandbox that shares this network but
        not this ``/run`` holds it (its process and record are invisible from here)."""
        said = False
        while True:
            held = _bind_abstract(self._network_lock)
            if held is not None:
                return held
            holder = _network_holder(self._network_lock)
            # Its PID is in another PID namespace: named, never probed from here.
            what = (f"{holder.purpose} (PID {holder.pid} in another container, since "
                    f"{holder.since})" if holder is not None
                    else "a sandbox in another container")
            if holder is not None and holder.kept:
                raise NodeBusyError(
                    f"the sandbox node's network (bridge, NAT rules) is held by {what}, "
                    "sharing this network: use that sandbox, or stop it where it runs "
                    "(`make sandbox-down` there)")
            if not said:
                self.notify(f"The sandbox node's network (bridge, NAT rules) is held by "
                            f"{what}; waiting for it to stop (one node per network).")
                said = True
            time.sleep(NETWORK_LOCK_POLL_SECONDS)

    def release(self) -> None:
        """Clear the record and let the next sandbox in (idempotent)."""
        held, self._socket = self._socket, None
        if held is not None:
            with contextlib.suppress(OSError):
                held.shutdown(socket.SHUT_RDWR)  # wakes the answering thread's accept()
            held.close()
        lock, self._file = self._file, None
        if lock is None:
            return
        with contextlib.suppress(OSError):
            lock.seek(0)
            lock.truncate()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _bind_abstract(name: str) -> socket.socket | None:
    """The bound, listening abstract socket ``name``, or None when a live process holds it."""
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.bind("\0" + name)
    except OSError as exc:
        held.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    held.listen(8)
    return held


def _answer_with(held: socket.socket, record: bytes) -> None:
    """Give each newcomer that connects the holder's record, until the lock is released."""
    while True:
        try:
            newcomer, _ = held.accept()
        except OSError:
            return  # released: shut down and closed
        with newcomer, contextlib.suppress(OSError):
            newcomer.sendall(record)


def _network_holder(name: str) -> Holder | None:
    """The record the network lock's holder answers with, or None (it is starting or
    stopping, or is an older sandbox that does not answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        received = b""
        try:
            probe.connect("\0" + name)
            while chunk := probe.recv(4096):
                received += chunk
        except OSError:
            return None
    return _holder_from(received)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
