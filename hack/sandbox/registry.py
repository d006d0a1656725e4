"""A private CNCF distribution registry (Debian's ``docker-registry``) on 127.0.0.1.

Debian's packaged config listens on every interface, so this writes its own (FACTS.md) and
starts the binary by hand: there is no systemd here. Optional htpasswd auth and a self-signed
certificate, or one signed by a private CA, let tests exercise the same auth and TLS paths as a
real private registry.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType

import httpx
import yaml

from sandbox.processes import free_port

_BINARY = "docker-registry"
_READY_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 3


def _htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the only hash distribution accepts)."""
    try:
        import bcrypt  # noqa: PLC0415 - optional: apache2-utils' htpasswd does the same
    except ImportError:
        result = subprocess.run(
            ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
        )
        return result.stdout.strip()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


def _self_signed_cert(directory: Path, address: str) -> tuple[Path, Path]:
    """A throwaway certificate valid for IP ``address`` (EC: generated in milliseconds)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _ca_signed_cert(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A private CA and a serving certificate it signed for IP ``address``: (ca, cert, key).

    What a company registry looks like: clients trust the CA (a bundle), not the leaf.
    """
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "cert.pem", directory / "key.pem", directory / "cert.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=stagewright-sandbox-private-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={address}"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-out", str(cert),
         "-extfile", str(_write(directory / "leaf.ext",
                                f"subjectAltName=IP:{address}\nbasicConstraints=CA:FALSE\n"
                                "extendedKeyUsage=serverAuth\n"))],
    ):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    return ca, cert, key


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class LocalRegistry:
    """A real registry process for one test session; ``with LocalRegistry() as reg: ...``."""

    def __init__(
        self, *, htpasswd: tuple[str, str] | None = None, tls: bool = False,
        address: str = "127.0.0.1", private_ca: bool = False, port: int = 0,
        access_log: bool = False,
    ) -> None:
        self.htpasswd = htpasswd
        #: Log every request to ``access_log_path`` (Apache combined format), for tests that
        #: check which requests a client made; off otherwise (noise under a burst).
        self.access_log = access_log
        #: ``private_ca``: TLS with a certificate signed by a CA of its own (``cert_path`` is
        #: then that CA, what clients must trust), instead of a self-signed one.
        self.private_ca = private_ca
        self.tls = tls or private_ca
        #: 127.0.0.1, or the sandbox bridge's gateway when build pods must reach it.
        self.address = address
        #: A fixed port (``make sandbox``: an address users can write down), or 0 for any free
        #: one (tests, several registries at once).
        self.fixed_port = port
        self.port = port
        self.cert_path: Path | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``ADDRESS:PORT``: the registry part of image references."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL, ``http://`` or ``https://`` as configured."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def root(self) -> Path:
        """The private directory holding config, storage, htpasswd and certificate."""
        if self._dir is None:
            raise RuntimeError("the registry is not started")
        return self._dir

    @property
    def access_log_path(self) -> Path:
        """The access log (the registry's stdout), with ``access_log=True``."""
        return self.root / "access.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this registry's certificate or CA (and only it)."""
        if self.cert_path is None:
            raise RuntimeError("this registry was started without tls=True")
        return ssl.create_default_context(cafile=str(self.cert_path))

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write a private config and start the registry; raise with its stderr on failure."""
        if shutil.which(_BINARY) is None:
            raise RuntimeError(
                f"{_BINARY} (CNCF distribution) is not installed: run `make deps` "
                "(apt-get install -y docker-registry)"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="stagewright-registry-"))
        try:
            attempts = 1 if self.fixed_port else _START_ATTEMPTS
            for attempt in range(attempts):
                self.port = self.fixed_port or free_port(self.address)
                config = self._write_config(self._dir)
                if self._launch(config, last_attempt=attempt == attempts - 1):
                    return
        except BaseException:
            self.stop()
            raise

    def _write_config(self, directory: Path) -> Path:
        storage = directory / "storage"
        storage.mkdir(exist_ok=True)
        http: dict[str, object] = {
            "addr": self.host,
            "secret": "stagewright-sandbox-secret",
        }
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": not self.access_log}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": http,
        }
        if self.htpasswd is not None:
            path = directory / "htpasswd"
            path.write_text(_htpasswd_line(*self.htpasswd) + "\n")
            config["auth"] = {"htpasswd": {"realm": "stagewright-sandbox", "path": str(path)}}
        if self.private_ca:
            self.cert_path, cert, key = _ca_signed_cert(directory, self.address)
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        elif self.tls:
            cert, key = _self_signed_cert(directory, self.address)
            self.cert_path = cert
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        path = directory / "config.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _launch(self, config: Path, *, last_attempt: bool) -> bool:
        """Start the process and wait for ``GET /v2/``; False if the port was taken meanwhile."""
        stderr_path = self.root / "stderr.log"
        with (stderr_path.open("wb") as stderr,
              self.access_log_path.open("ab") if self.access_log else nullcontext() as stdout):
            self._process = subprocess.Popen(
                [_BINARY, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stdout or subprocess.DEVNULL,
                stderr=stderr,
            )
        verify: ssl.SSLContext | bool = self.ssl_context() if self.tls else True
        deadline = time.monotonic() + _READY_TIMEOUT
        with httpx.Client(verify=verify, timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    log = stderr_path.read_text(errors="replace")
                    self._process = None
                    if "address already in use" in log and not last_attempt:
                        return False
                    raise RuntimeError(f"{_BINARY} exited at start-up:\n{log}")
                try:
                    # 200, or 401 with htpasswd: either way the registry answers.
                    client.get(f"{self.url}/v2/")
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                return True
        log = stderr_path.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"{_BINARY} not ready after {_READY_TIMEOUT:.0f} s:\n{log}")

    def pause(self) -> None:
        """Stop serving (a fault): the process ends, its port, storage and config stay."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(_STOP_TIMEOUT)

    def resume(self) -> None:
        """Serve again on the same address and port, with the images pushed before."""
        if self._process is not None:
            raise RuntimeError("the registry is running")
        self._launch(self.root / "config.yml", last_attempt=True)

    def stop(self) -> None:
        """Stop our process by PID (terminate, wait, kill) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
