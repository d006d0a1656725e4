"""The followed-log reader against a real HTTP server that streams, then falls silent."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3

from stagewright.cli.kube import LogStream


class _SlowLog(http.server.BaseHTTPRequestHandler):
    """A kubelet-like followed log: two lines, then nothing until the client goes away."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for text in (b"INFO[0000] RUN make\n", b"compiling", b" the app\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(text), text))
            self.wfile.flush()
        if self.path == "/end":
            self.wfile.write(b"4\r\ntail\r\n0\r\n\r\n")
            return
        time.sleep(30)  # a silent build step

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowLog)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def open_stream(url: str) -> LogStream:
    response = urllib3.PoolManager().request("GET", url, preload_content=False)
    return LogStream(response)


def test_lines_arrive_whole_and_the_end_is_reported(server: str) -> None:
    stream = open_stream(f"{server}/end")
    lines = []
    while not stream.ended:
        line = stream.next_line(5)
        if line is not None:
            lines.append(line)
    assert lines == ["INFO[0000] RUN make", "compiling the app", "tail"]
    assert stream.error is None
    stream.close()


def test_close_returns_at_once_while_the_container_is_silent(server: str) -> None:
    stream = open_stream(f"{server}/silent")
    assert stream.next_line(5) == "INFO[0000] RUN make"
    assert stream.next_line(5) == "compiling the app"
    assert stream.next_line(0.3) is None
    assert not stream.ended
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 3
