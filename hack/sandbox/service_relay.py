"""The ``kubernetes`` Service for pods, without kube-proxy: 10.96.0.1:443 -> the apiserver.

An operator installed in the cluster (the chart, the kustomize base) reaches the apiserver as
every in-cluster client does, through ``KUBERNETES_SERVICE_HOST``/``_PORT`` (10.96.0.1:443,
set by the kubelet). The sandbox node has no kube-proxy, so nothing answers there. FACTS.md's
recipe, tried on these machines: the Service address on the sandbox bridge (pods route to the
host through the bridge's gateway, so the host receives the packets), and a TCP relay from
that address to the apiserver on 127.0.0.1, whose serving certificate names 10.96.0.1. TLS
passes through untouched: the operator verifies the apiserver with its ServiceAccount's CA.

Run as its own process (``python -m sandbox.service_relay LISTEN PORT TARGET PORT``), stopped
by PID; the address is removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sandbox.controlplane import SERVICE_IP
from sandbox.processes import Service, stop_group

SERVICE_PORT = 443
_READY_TIMEOUT = 10.0
_CHUNK = 65536


class ServiceRelay(Service):
    """10.96.0.1 on ``bridge`` and a relay process from 10.96.0.1:443 to ``target_port``."""

    def __init__(self, bridge: str, target_port: int, log_file: Path) -> None:
        self.bridge = bridge
        self.target_port = target_port
        self.log_file = log_file
        self._address_added = False
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Add the address, start the relay, return once it accepts connections."""
        subprocess.run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", self.bridge],
                       check=True, capture_output=True)
        self._address_added = True
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.service_relay", SERVICE_IP, str(SERVICE_PORT),
                 "127.0.0.1", str(self.target_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("the service relay exited:\n"
                                   + self.log_file.read_text(errors="replace"))
            with contextlib.suppress(OSError), socket.create_connection(
                    (SERVICE_IP, SERVICE_PORT), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the service relay did not listen after {_READY_TIMEOUT}s")

    def stop(self) -> None:
        """Stop the relay by PID, then remove the address (idempotent)."""
        process, self._process = self._process, None
        if process is not None:
            stop_group(process, timeout=5)
        if self._address_added:
            subprocess.run(["ip", "addr", "del", f"{SERVICE_IP}/32", "dev", self.bridge],
                           check=False, capture_output=True)
            self._address_added = False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


async def _serve(listen: str, port: int, target: str, target_port: int) -> None:
    async def relay(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer),
                             _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(relay, listen, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    """``LISTEN PORT TARGET TARGET_PORT``: relay until SIGTERM."""
    listen, port, target, target_port = argv
    asyncio.run(_serve(listen, int(port), target, int(target_port)))


if __name__ == "__main__":
    main(sys.argv[1:])
