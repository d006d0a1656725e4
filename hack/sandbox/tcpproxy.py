"""A TCP relay on 127.0.0.1 that can cut every connection through it at once (a fault).

Put between the operator and the apiserver, ``cut()`` does what a load balancer's restart or
a NAT table flush does to a long-lived watch: both ends see the connection close mid-stream.
TLS passes through untouched (the apiserver's certificate names 127.0.0.1, any port).
Threads only, no child process; ``stop()`` ends them all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class TcpProxy:
    """``127.0.0.1:port`` -> ``target``; ``with TcpProxy(("127.0.0.1", 6443)) as proxy: ...``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)
        #: How many connections were relayed, and how many ``cut()`` closed.
        self.accepted = 0
        self.cut_count = 0

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``, for a kubeconfig's server."""
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def cut(self) -> int:
        """Close every open connection, both ends; new ones are still accepted. Returns how
        many connections (pairs) were open."""
        with self._lock:
            open_now = list(self._open)
        self._close(*open_now)
        self.cut_count += len(open_now) // 2
        return len(open_now) // 2

    def stop(self) -> None:
        """Stop accepting, close everything, and end the threads."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(timeout=5)
        self.cut()
