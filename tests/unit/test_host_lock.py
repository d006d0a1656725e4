"""The sandbox node's machine-wide lock says who holds it (hack/sandbox/host_lock.py).

Real ``flock`` on a lock file of the test's own: two opens of one file conflict as two
processes' would, so a holder and a newcomer can meet in one test. The network-wide half is a
real abstract Unix socket under a name of the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandbox.host_lock import LOCK_FILE, Holder, HostLock, NodeBusyError, read_holder

#: The sandbox package's directory, for a child Python that imports it.
HACK = str(Path(__file__).resolve().parents[2] / "hack")


@pytest.fixture
def network() -> str:
    """A network lock name of the test's own: never the real sandbox's, which a sandbox
    running on this machine (a test run, `make sandbox`) holds."""
    return f"stagewright-test-{uuid.uuid4().hex}"


def test_a_kept_sandbox_refuses_a_newcomer_at_once_saying_how_to_use_or_stop_it(
        tmp_path: Path, network: str) -> None:
    path = tmp_path / "node.lock"
    kept = HostLock("make sandbox", kept=True, kubeconfig="/repo/.sandbox/kubeconfig",
                    path=path, network_lock=network)
    kept.acquire()
    try:
        holder = read_holder(path)
        assert holder is not None
        assert (holder.purpose, holder.kept) == ("make sandbox", True)
        newcomer = HostLock("a test run", path=path, network_lock=network)
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


def test_a_transient_holder_is_waited_for_and_named(tmp_path: Path, network: str) -> None:
    path = tmp_path / "node.lock"
    first = HostLock("make demo", path=path, network_lock=network)
    first.acquire()
    said: list[str] = []
    second = HostLock("a test run", notify=said.append, path=path, network_lock=network)
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


def test_a_sandbox_sharing_the_network_but_not_run_is_waited_for(
        tmp_path: Path, network: str) -> None:
    """Two containers on one network see two lock files and one bridge: the abstract socket
    (scoped to the network namespace) makes the second wait, and lets it in once released."""
    first = HostLock("a test run in CI", path=tmp_path / "ci.lock", network_lock=network)
    first.acquire()
    said: list[str] = []
    second = HostLock("a test run in a shell", notify=said.append,
                      path=tmp_path / "shell.lock", network_lock=network)
    waiter = threading.Thread(target=second.acquire)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # its own lock file was free; the network was not
    assert said == [f"The sandbox node's network (bridge, NAT rules) is held by a test run in "
                    f"CI (PID {first.record.pid} in another container, since "
                    f"{first.record.since}); waiting for it to stop (one node per network)."]
    first.release()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert second.waited_seconds >= 0.4
    second.release()


def test_a_killed_holder_frees_the_network_lock_with_its_process(
        tmp_path: Path, network: str) -> None:
    """The kernel frees the abstract name when the holder dies, even by SIGKILL: the next
    sandbox gets the network at once (and takes over the bridge it left)."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         f"s.bind('\\0{network}')\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        blocked = HostLock("a test run", path=tmp_path / "a.lock", network_lock=network)
        waiter = threading.Thread(target=blocked.acquire)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()
        holder.kill()
        holder.wait()
        waiter.join(timeout=5)
        assert not waiter.is_alive()
        blocked.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_kept_sandbox_in_another_container_refuses_a_newcomer_at_once(
        tmp_path: Path, network: str) -> None:
    """Across containers the lock file is not shared, so the holder answers on the network
    lock with its record: a kept sandbox there refuses as one here does, never queued behind."""
    kept = HostLock("make sandbox", kept=True, path=tmp_path / "theirs.lock",
                    network_lock=network)
    kept.acquire()
    try:
        newcomer = HostLock("a test run", path=tmp_path / "ours.lock", network_lock=network)
        started = time.monotonic()
        with pytest.raises(NodeBusyError) as refused:
            newcomer.acquire()
        assert time.monotonic() - started < 5
        assert str(refused.value) == (
            f"the sandbox node's network (bridge, NAT rules) is held by make sandbox (PID "
            f"{kept.record.pid} in another container, since {kept.record.since}), sharing "
            "this network: use that sandbox, or stop it where it runs (`make sandbox-down` "
            "there)")
        assert read_holder(tmp_path / "ours.lock") is None  # refused: nothing written
    finally:
        kept.release()
    again = HostLock("a test run", path=tmp_path / "ours.lock", network_lock=network)
    again.acquire()  # released: the name is free again at once
    again.release()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a private mount namespace (unshare -m) needs root")
def test_a_holder_in_another_mount_namespace_is_seen_through_the_network(
        tmp_path: Path, network: str) -> None:
    """Another container, for real: the holder runs under ``unshare --mount`` with a tmpfs of
    its own on /run, so its lock file at the real path is invisible here; the network lock,
    which the kernel scopes to the network namespace, still stops the newcomer."""
    script = ("import sys, time\n"
              "from sandbox.host_lock import LOCK_FILE, HostLock\n"
              f"held = HostLock('make sandbox', kept=True, network_lock='{network}')\n"
              "held.acquire()\n"
              "print(LOCK_FILE.read_text(), flush=True)\n"
              "time.sleep(60)\n")
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs tmpfs /run && exec "$0" -c "$1"', sys.executable, script],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": HACK})
    try:
        assert holder.stdout is not None
        record = json.loads(holder.stdout.readline())
        assert record["purpose"] == "make sandbox"
        assert read_holder(LOCK_FILE) != Holder(**record)  # its /run is not ours
        newcomer = HostLock("a test run", path=tmp_path / "ours.lock", network_lock=network)
        with pytest.raises(NodeBusyError) as refused:
            newcomer.acquire()
        assert f"held by make sandbox (PID {record['pid']} in another container" in str(
            refused.value)
    finally:
        holder.kill()
        holder.wait()
