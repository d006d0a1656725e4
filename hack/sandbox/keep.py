"""``make sandbox``: the local sandbox, kept up until Ctrl-C or ``make sandbox-down``.

The same sandbox ``make demo`` and the cluster tier run (a real one-node Kubernetes 1.20,
a registry, real Kaniko, the operator as a host process), for a person to use by hand:
``kubectl`` and ``stagewright`` against it, the README's quick start word for word. It writes
``.sandbox/env`` (KUBECONFIG, PATH, the registry's address) and ``.sandbox/kubeconfig`` in the
repository, prints what to do, and waits. Stopping (Ctrl-C here, or ``make sandbox-down``
from anywhere, which sends SIGTERM to the PID in the node's lock) undoes every host change,
as the demo and the tests do. The registry listens on a fixed address, 10.244.0.1:5000, so
samples can name it; the bridge's address is the sandbox's alone (one node per machine).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from sandbox.controlplane import REPO_ROOT
from sandbox.host_lock import HostLock, NodeBusyError, read_holder
from sandbox.images import KanikoMissingError, kaniko_executor
from sandbox.node import GATEWAY
from sandbox.stack import Sandbox

STATE = REPO_ROOT / ".sandbox"
REGISTRY_PORT = 5000
SAMPLE = "manifests/samples/sandbox-quickstart.yaml"
#: How long ``make sandbox-down`` waits for the sandbox to stop (it undoes host changes).
STOP_TIMEOUT = 120.0


class StopRequestedError(Exception):
    """SIGTERM (``make sandbox-down``) or SIGINT (Ctrl-C) asked the sandbox to stop."""


def _tool_path() -> str:
    """The directories with ``stagewright`` (the venv) and ``kubectl``/``helm`` (the cache)."""
    cache = Path(os.environ.get("STAGEWRIGHT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stagewright")
    return f"{REPO_ROOT / '.venv' / 'bin'}:{cache / 'bin'}"


def self_contained_kubeconfig(admin_kubeconfig: Path) -> dict[str, Any]:
    """The admin kubeconfig with its CA embedded: one file a user can copy or point at."""
    config = yaml.safe_load(admin_kubeconfig.read_text())
    for cluster in config["clusters"]:
        ca = Path(cluster["cluster"].pop("certificate-authority"))
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(
            ca.read_bytes()).decode()
    config["contexts"][0]["name"] = config["current-context"] = "stagewright-sandbox"
    return dict(config)


def write_state(sandbox: Sandbox) -> None:
    """``.sandbox/kubeconfig`` and ``.sandbox/env``, for ``. .sandbox/env``."""
    STATE.mkdir(exist_ok=True)
    (STATE / ".gitignore").write_text("*\n")
    kubeconfig = STATE / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(
        self_contained_kubeconfig(sandbox.control_plane.admin.kubeconfig)))
    kubeconfig.chmod(0o600)
    (STATE / "env").write_text(
        "# Written by `make sandbox` while it runs; use it with: . .sandbox/env\n"
        f"export KUBECONFIG={kubeconfig}\n"
        f'export PATH="{_tool_path()}:$PATH"\n'
        f"export SANDBOX_REGISTRY={sandbox.registry.host}\n")


def clear_state() -> None:
    for name in ("env", "kubeconfig"):
        with contextlib.suppress(FileNotFoundError):
            (STATE / name).unlink()


def instructions(sandbox: Sandbox, seconds: float) -> str:
    return f"""
The sandbox is up ({seconds:.0f}s): Kubernetes 1.20 on this machine, one node, the operator.
In another terminal:

  . .sandbox/env          # KUBECONFIG={STATE / 'kubeconfig'}, PATH with kubectl and stagewright
  stagewright build -f {SAMPLE} --follow
  kubectl get ib -A

Registry for output.image: {sandbox.registry.host} (plain HTTP: set output.insecure: true)
Base image for FROM:      {sandbox.base_image}
Operator log:             {sandbox.operator.log_file}

Ctrl-C here, or `make sandbox-down`, stops it and undoes every change to this machine.
"""


def up(registry_port: int) -> int:
    """Start the sandbox, say how to use it, and keep it up until asked to stop."""
    try:
        kaniko_executor()
    except KanikoMissingError as exc:
        print(f"make sandbox needs the real Kaniko executor: {exc}", file=sys.stderr)
        return 2

    def asked_to_stop(_signum: int, _frame: FrameType | None) -> None:
        # Once: a second Ctrl-C must not cut the clean-up short (it undoes host changes).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise StopRequestedError

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, asked_to_stop)
    lock = HostLock("make sandbox", kept=True, kubeconfig=str(STATE / "kubeconfig"),
                    notify=lambda message: print(message, flush=True))
    started = time.monotonic()
    print("Starting the sandbox: kube-apiserver + etcd, registry, images, a node (containerd, "
          "kubelet, scheduler, controller-manager), operator...", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="stagewright-sandbox-") as work, \
                Sandbox(Path(work), lock=lock, registry_port=registry_port) as sandbox:
            try:
                write_state(sandbox)
                print(instructions(sandbox, time.monotonic() - started
                                   - sandbox.node_host.lock_wait_seconds), flush=True)
                while True:
                    time.sleep(3600)
            finally:
                print("Stopping the sandbox...", flush=True)
                clear_state()
    except StopRequestedError:
        pass
    except NodeBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("Stopped; the machine is as it was.", flush=True)
    return 0


def down() -> int:
    """Ask the kept sandbox to stop (SIGTERM to the PID in the node's lock), and wait."""
    holder = read_holder()
    if holder is None or not holder.kept:
        print("No kept sandbox is up (make sandbox starts one).")
        return 0
    print(f"Stopping {holder.describe()}...", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        current = read_holder()
        if current is None or current.pid != holder.pid:
            print("Stopped.")
            return 0
        time.sleep(0.5)
    print(f"error: PID {holder.pid} still holds the node after {STOP_TIMEOUT:.0f}s",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sandbox.keep`` (``make sandbox``, ``make sandbox-down``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="stop the kept sandbox")
    parser.add_argument("--registry-port", type=int, default=REGISTRY_PORT,
                        help=f"the registry's port on {GATEWAY} (default {REGISTRY_PORT})")
    args = parser.parse_args(argv)
    return down() if args.down else up(args.registry_port)


if __name__ == "__main__":
    sys.exit(main())
