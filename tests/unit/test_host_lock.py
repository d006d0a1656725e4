"""The sandbox node's machine-wide lock says who holds it (hack/sandbox/host_lock.py).

Real ``flock`` on a lock file of the test's own: two opens of one file conflict as two
processes' would, so a holder and a newcomer can meet in one test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sandbox.host_lock import HostLock, NodeBusyError, read_holder


def test_a_kept_sandbox_refuses_a_newcomer_at_once_saying_how_to_use_or_stop_it(
        tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    kept = HostLock("make sandbox", kept=True, kubeconfig="/repo/.sandbox/kubeconfig",
                    path=path)
    kept.acquire()
    try:
        holder = read_holder(path)
        assert holder is not None
        assert (holder.purpose, holder.kept) == ("make sandbox", True)
        newcomer = HostLock("a test run", path=path)
        started = time.monotonic()
        with pytest.raises(NodeBusyError) as refused:
            newcomer.acquire()
        assert time.monotonic() - started < 5  # refused, not queued behind it
        message = str(refused.value)
        assert message.startswith(f"the sandbox node is held by make sandbox (PID "
                                  f"{holder.pid}, since {holder.since})")
        assert "KUBECONFIG=/repo/.sandbox/kubeconfig" in message
        assert "make sandbox-down" in message
    finally:
        kept.release()
    assert read_holder(path) is None  # released: the record is cleared


def test_a_transient_holder_is_waited_for_and_named(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    first = HostLock("make demo", path=path)
    first.acquire()
    said: list[str] = []
    second = HostLock("a test run", notify=said.append, path=path)
    waiter = threading.Thread(target=second.acquire)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # queued behind the demo
    assert len(said) == 1
    assert said[0].startswith("The sandbox node is held by make demo (PID ")
    assert said[0].endswith("; waiting for it to stop (one node per machine).")
    first.release()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    holder = read_holder(path)
    assert holder is not None
    assert holder.purpose == "a test run"
    assert second.waited_seconds >= 0.4
    second.release()
