"""A real Kubernetes control plane on 127.0.0.1: etcd plus kube-apiserver, RBAC on.

The apiserver binary is built from Debian's source package by
``hack/build-kubernetes.sh`` (cached). Identities come from a static token file: an
admin, the sandbox kubelet, and the operator, whose user name is that of the chart's
ServiceAccount, so the chart's ClusterRoleBinding applies to it unchanged and every call the
operator makes is checked against the RBAC we ship.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from sandbox.processes import Service, free_port, stop_group

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kubernetes.sh"

#: The one node's name (sandbox.node runs it); its kubelet's identity is system:node:<this>.
NODE_NAME = "sandbox-node"
OPERATOR_NAMESPACE = "stagewright-system"
OPERATOR_SERVICE_ACCOUNT = "stagewright-operator"
#: The ``kubernetes`` Service's address: the first of ``--service-cluster-ip-range``. Pods reach
#: the apiserver there (sandbox.service_relay), so its serving certificate names it.
SERVICE_IP = "10.96.0.1"
#: The user name Kubernetes gives a ServiceAccount: RBAC matches it to ServiceAccount subjects.
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
OPERATOR_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")


def kubernetes_binary(name: str) -> Path:
    """A cached Kubernetes binary (kube-apiserver, kubelet, ...), built on first use (~8 min)."""
    result = subprocess.run([str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(result.stdout.strip().splitlines()[-1]) / name


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_certificates(directory: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1 and the ``kubernetes`` Service, and the
    ServiceAccount signing key."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.crt"),
             "-subj", "/CN=stagewright-sandbox-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(directory / "apiserver.key"),
             "-out", str(directory / "apiserver.csr"), "-subj", "/CN=kube-apiserver")
    (directory / "san.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n")
    _openssl("x509", "-req", "-in", str(directory / "apiserver.csr"), "-days", "2",
             "-CA", str(directory / "ca.crt"), "-CAkey", str(directory / "ca.key"),
             "-CAcreateserial", "-extfile", str(directory / "san.ext"),
             "-out", str(directory / "apiserver.crt"))
    _openssl("genrsa", "-out", str(directory / "sa.key"), "2048")
    # The apiserver's client certificate for kubelets (logs, exec): the node accepts only it.
    _openssl("req", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(directory / "kubelet-client.key"),
             "-out", str(directory / "kubelet-client.csr"),
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _openssl("x509", "-req", "-in", str(directory / "kubelet-client.csr"), "-days", "2",
             "-CA", str(directory / "ca.crt"), "-CAkey", str(directory / "ca.key"),
             "-CAcreateserial", "-out", str(directory / "kubelet-client.crt"))


@dataclass
class Identity:
    """A user of the sandbox cluster, with its own kubeconfig."""

    name: str
    token: str
    groups: tuple[str, ...]
    kubeconfig: Path = field(default=Path())


class ControlPlane(Service):
    """etcd + kube-apiserver in a work directory; stopped and cleaned up on exit."""

    def __init__(self, work_dir: Path, *, pod_security_policy: bool = False,
                 service_accounts: bool = False) -> None:
        self.work_dir = work_dir
        #: The ServiceAccount admission plugin, as every real cluster runs it: pods get their
        #: account's token mounted (the in-cluster operator needs it), and a pod whose account
        #: does not exist yet is refused. Only with a controller-manager, which makes the
        #: accounts and their tokens; a bare apiserver would refuse every pod.
        self.service_accounts = service_accounts
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        #: With the PodSecurityPolicy admission plugin, no pod is admitted without a policy
        #: its creator (or its ServiceAccount) may use: the caller must install some.
        self.pod_security_policy = pod_security_policy
        #: Running components by name (etcd, kube-apiserver), in start order.
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        #: Each component's command line, kept so a fault test can restart it unchanged.
        self._commands: dict[str, list[str]] = {}
        self.admin = Identity("sandbox-admin", secrets.token_hex(16), ("system:masters",))
        self.operator = Identity(OPERATOR_USER, secrets.token_hex(16), OPERATOR_GROUPS)
        # The node's components, as kubeadm names them: the Node authorizer and the default
        # RBAC roles (system:kube-scheduler, ...) then apply to them unchanged.
        self.kubelet = Identity(f"system:node:{NODE_NAME}", secrets.token_hex(16),
                                ("system:nodes",))
        self.scheduler = Identity("system:kube-scheduler", secrets.token_hex(16), ())
        self.controller_manager = Identity("system:kube-controller-manager",
                                           secrets.token_hex(16), ())

    @property
    def pki(self) -> Path:
        """CA, serving certificate and ServiceAccount key (the controller-manager needs them)."""
        return self.work_dir / "pki"

    def start(self) -> None:
        """Start etcd and kube-apiserver and wait until the API answers."""
        binary = kubernetes_binary("kube-apiserver")
        pki = self.pki
        pki.mkdir(parents=True, exist_ok=True)
        _make_certificates(pki)
        identities = (self.admin, self.operator, self.kubelet, self.scheduler,
                      self.controller_manager)
        (self.work_dir / "tokens.csv").write_text("".join(
            f"{i.token},{i.name},{i.name}" + (f',"{",".join(i.groups)}"' if i.groups else "")
            + "\n" for i in identities))
        for identity in identities:
            identity.kubeconfig = self._write_kubeconfig(identity, pki / "ca.crt")
        etcd_port, etcd_peer = free_port(), free_port()
        admission = [] if self.service_accounts else ["--disable-admission-plugins",
                                                       "ServiceAccount"]
        if self.pod_security_policy:
            admission += ["--enable-admission-plugins", "PodSecurityPolicy"]
        self._spawn("etcd", [
            "etcd", "--data-dir", str(self.work_dir / "etcd"), "--name", "sandbox",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"sandbox=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        ])
        self._spawn("kube-apiserver", [
            str(binary), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--secure-port", str(self.port),
            "--insecure-port", "0",
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--token-auth-file", str(self.work_dir / "tokens.csv"),
            "--authorization-mode", "Node,RBAC",
            # The node registers with its IP: logs and exec go there, not to its host name.
            "--kubelet-preferred-address-types", "InternalIP",
            "--kubelet-client-certificate", str(pki / "kubelet-client.crt"),
            "--kubelet-client-key", str(pki / "kubelet-client.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.key"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/24",
            *admission,
            "--cert-dir", str(pki / "generated"),
        ])
        self._wait_ready(pki / "ca.crt")

    def _spawn(self, name: str, command: list[str]) -> None:
        self._commands[name] = command
        log = (self.work_dir / f"{name}.log").open("ab")
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop_component(self, name: str, *, kill: bool = False) -> None:
        """Stop etcd or kube-apiserver alone (a fault); its ports, certificates and data stay.

        ``kill`` sends SIGKILL (a crash) instead of SIGTERM (a clean shutdown).
        """
        process = self._processes.pop(name)
        stop_group(process, kill=kill)

    def start_component(self, name: str) -> None:
        """Start a stopped component again with its old command line, and wait until the API
        answers (etcd's return shows there: the apiserver's readiness checks etcd).
        """
        if name in self._processes:
            raise RuntimeError(f"{name} is running")
        self._spawn(name, self._commands[name])
        self._wait_ready(self.pki / "ca.crt")

    def _wait_ready(self, ca: Path, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {self.admin.token}"}
        trust = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes.values():
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args!r} exited: see {self.work_dir}/*.log\n"
                                       + self.logs())
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/readyz", headers=headers, verify=trust, timeout=2)
                if ready.status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s:\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        """The last lines of each component's log, for failure messages."""
        parts = []
        for log in sorted(self.work_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _write_kubeconfig(self, identity: Identity, ca: Path) -> Path:
        path = self.work_dir / f"{identity.name.replace(':', '-')}.kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
            "clusters": [{"name": "sandbox", "cluster": {
                "server": self.url, "certificate-authority": str(ca)}}],
            "users": [{"name": identity.name, "user": {"token": identity.token}}],
            "contexts": [{"name": "sandbox", "context": {
                "cluster": "sandbox", "user": identity.name, "namespace": "default"}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        """Stop the apiserver, then etcd (reverse order), by PID."""
        for name in reversed(list(self._processes)):
            stop_group(self._processes.pop(name))
        shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)
