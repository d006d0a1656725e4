"""A git server for build pods: git's own ``git http-backend`` behind basic auth.

Kaniko clones git contexts over smart HTTP with GIT_USERNAME/GIT_PASSWORD, as from any private
git host. ``http-backend`` is a CGI program; a small threaded HTTP server in a child process
checks the credentials and runs it per request. It binds to the address given (the sandbox
bridge's gateway, so pods reach it) and is stopped by PID.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from sandbox.processes import free_port, stop_group

_READY_TIMEOUT = 10.0


class GitServer:
    """Serves the bare repositories under ``root`` at ``http://ADDRESS:PORT/<name>.git``."""

    def __init__(self, root: Path, *, address: str, user: str, password: str) -> None:
        self.root = root
        self.address = address
        self.user = user
        self.password = password
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def __enter__(self) -> Self:
        self.port = free_port(self.address)
        log = (self.root / "server.log").open("wb")
        env = {**os.environ, "GIT_SERVER_CREDENTIALS": f"{self.user}:{self.password}"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.gitserver", str(self.root), self.address,
             str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1, trust_env=False)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            return self
        self.stop()
        raise RuntimeError(f"git server not ready: {(self.root / 'server.log').read_text()}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_group(process)

    def create_repository(self, name: str, files: dict[str, str], *,
                          branch: str = "main") -> str:
        """A bare repository ``<name>.git`` with one commit of ``files``; returns its SHA."""
        bare = self.root / f"{name}.git"
        with tempfile.TemporaryDirectory() as work:
            for path, text in files.items():
                (Path(work) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(work) / path).write_text(text)
            git = ["git", "-C", work, "-c", "user.name=sandbox", "-c", "user.email=s@sandbox"]
            subprocess.run([*git, "init", "-q", "-b", branch], check=True)
            subprocess.run([*git, "add", "."], check=True)
            subprocess.run([*git, "commit", "-q", "-m", "context"], check=True)
            subprocess.run(["git", "clone", "-q", "--bare", work, str(bare)], check=True)
        # Kaniko (go-git) fetches a commit by its SHA, as hosted git services allow.
        subprocess.run(["git", "-C", str(bare), "config", "uploadpack.allowReachableSHA1InWant",
                        "true"], check=True)
        return self.head(name, branch)

    def commit(self, name: str, files: dict[str, str], *, branch: str = "main") -> str:
        """Add a commit of ``files`` on ``branch`` (created from HEAD if new); returns its SHA."""
        bare = self.root / f"{name}.git"
        with tempfile.TemporaryDirectory() as work:
            git = ["git", "-C", work, "-c", "user.name=sandbox", "-c", "user.email=s@sandbox"]
            subprocess.run(["git", "clone", "-q", str(bare), work], check=True)
            subprocess.run([*git, "checkout", "-q", "-B", branch], check=True)
            for path, text in files.items():
                (Path(work) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(work) / path).write_text(text)
            subprocess.run([*git, "add", "."], check=True)
            subprocess.run([*git, "commit", "-q", "-m", "change"], check=True)
            subprocess.run([*git, "push", "-q", "origin", branch], check=True)
        return self.head(name, branch)

    def head(self, name: str, branch: str) -> str:
        done = subprocess.run(["git", "-C", str(self.root / f"{name}.git"), "rev-parse", branch],
                              check=True, capture_output=True, text=True)
        return done.stdout.strip()


class _Handler(BaseHTTPRequestHandler):
    """Basic auth, then the request handed to ``git http-backend`` as CGI."""

    root = Path()
    credentials = ""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The access log line with the client's User-Agent: tests tell the operator's ref
        look-ups (``git/stagewright``) from the build pods' clones."""
        self.log_message('"%s" %s %s "%s"', self.requestline, code, size,
                         self.headers.get("User-Agent", "-"))

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="sandbox git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": self.credentials.split(":")[0],
            "REMOTE_ADDR": self.client_address[0],
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    """``python -m sandbox.gitserver ROOT ADDRESS PORT`` (what :class:`GitServer` runs)."""
    root, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _Handler.root = Path(root)
    _Handler.credentials = os.environ["GIT_SERVER_CREDENTIALS"]
    ThreadingHTTPServer((address, port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
