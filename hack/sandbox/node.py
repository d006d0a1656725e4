"""A real Kubernetes node for the sandbox: containerd + CNI bridge + kubelet, with the
scheduler and the controller-manager that make the control plane a cluster.

Recipe and settings from FACTS.md ("A real node"). Two parts, entered in this order:

- :class:`NodeHost` owns what is host-wide: a lock (one node per machine and per network; a
  second sandbox waits), the bridge whose gateway address the sandbox's registry and git
  server bind to (a killed sandbox's bridge is taken over), and the undo of every host change
  on exit (NAT rules, ip_forward, the kubelet's fixed dirs, network namespaces, the
  ``kubepods`` cgroups), even after a failure.
- :class:`Node` runs the processes (containerd, kube-scheduler, kube-controller-manager,
  kubelet), each with its standard identity, and stops them by PID with every container
  they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from kubernetes import client, config

from sandbox.buildah import mounts_under
from sandbox.controlplane import NODE_NAME, ControlPlane, kubernetes_binary
from sandbox.host_lock import HostLock
from sandbox.processes import Service, free_port, stop_group

#: Host-wide names, in one place: only one sandbox node can exist on a machine at a time.
BRIDGE = "swbr0"
SUBNET = "10.244.0.0/24"
#: The bridge's own address: pods reach the host here (never 127.0.0.1, which is theirs).
GATEWAY = "10.244.0.1"
#: The bridge's own MAC, fixed (locally administered). A Linux bridge without one takes the
#: lowest MAC among its ports and changes it when that port leaves: every pod's ARP entry for
#: the gateway then points at a MAC nobody answers for, and its connections to the registry
#: time out for ~30 s after any other pod ends (Kaniko: "dial tcp 10.244.0.1:PORT: i/o
#: timeout"). Docker fixes docker0's MAC for the same reason.
BRIDGE_MAC = "02:53:57:00:00:01"
CNI_NETWORK = "stagewright-sandbox"
CNI_PLUGINS = Path("/usr/lib/cni")
#: Paths the kubelet, containerd and CNI write whatever they are told: removed on exit when
#: they did not exist before (the lock makes them ours meanwhile).
FIXED_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/var/lib/kubelet"),
              Path("/var/lib/cni"), Path("/run/containerd"), Path("/run/netns"))
NETNS_DIR = Path("/run/netns")
IPTABLES_TABLES = ("nat", "filter", "mangle")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
READY_TIMEOUT = 90.0


def _run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class NodeHost:
    """The host side of the node: lock, bridge, and the undo of every host change."""

    def __init__(self, lock: HostLock | None = None) -> None:
        #: Who this node is for, written into the machine-wide lock (see host_lock).
        self.lock = lock or HostLock("a sandbox")
        self._ip_forward = ""
        self._iptables: dict[str, set[str]] = {}
        self._existing_dirs: set[Path] = set()
        self._existing_netns: set[str] = set()
        self._existing_kubepods: set[Path] = set()
        self.lock_wait_seconds = 0.0

    def __enter__(self) -> Self:
        self.lock.acquire()  # a second sandbox queues here, or is refused (a kept one)
        self.lock_wait_seconds = self.lock.waited_seconds
        try:
            self._snapshot()
            self._make_bridge()
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    def _snapshot(self) -> None:
        self._ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self._iptables = {table: set(_iptables_lines(table)) for table in IPTABLES_TABLES}
        self._existing_dirs = {path for path in FIXED_DIRS if path.exists()}
        self._existing_netns = set(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else set()
        self._existing_kubepods = set(CGROUP_ROOT.glob(f"*/{KUBEPODS}"))

    def _make_bridge(self) -> None:
        """Create the bridge now, so servers can bind to its gateway before any pod exists.

        The lock is held, network-wide (see host_lock): a bridge already there belongs to no
        live sandbox but to one that was killed (SIGKILL, a machine's session ended), and
        would otherwise block every later sandbox on this network. It is taken over.
        """
        if _run("ip", "-o", "link", "show", BRIDGE, check=False):
            self.lock.notify(f"Bridge {BRIDGE} was left by a sandbox that was killed (no live "
                             "sandbox holds this network); deleting it.")
            _run("ip", "link", "delete", BRIDGE)
        _run("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{SUBNET.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def restore(self) -> None:
        """Undo the host changes (idempotent), then release the lock."""
        steps = [
            lambda: _kill_kubepods(self._existing_kubepods), self._remove_netns,
            self._restore_iptables, lambda: _run("ip", "link", "delete", BRIDGE, check=False),
            self._restore_ip_forward, self._remove_fixed_dirs,
        ]
        failures: list[Exception] = []
        try:
            for step in steps:  # every step runs, whatever an earlier one raised
                try:
                    step()
                except Exception as exc:  # collected, the first raised below
                    failures.append(exc)
            if failures:
                raise failures[0]
        finally:
            self.lock.release()

    def _restore_ip_forward(self) -> None:
        if self._ip_forward:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self._ip_forward + "\n")

    def _remove_fixed_dirs(self) -> None:
        for path in FIXED_DIRS:
            if path not in self._existing_dirs and path.exists():
                _unmount_all_under(path)
                shutil.rmtree(path, ignore_errors=True)

    def _remove_netns(self) -> None:
        if not NETNS_DIR.exists():
            return
        for name in set(os.listdir(NETNS_DIR)) - self._existing_netns:
            subprocess.run(["umount", "-l", str(NETNS_DIR / name)], check=False,
                           capture_output=True)
            with contextlib.suppress(OSError):
                (NETNS_DIR / name).unlink()

    def _restore_iptables(self) -> None:
        """Delete the rules and chains CNI (bridge, portmap) added since the snapshot."""
        if not self._iptables:
            return
        for table in IPTABLES_TABLES:
            before = self._iptables.get(table, set())
            added = [line for line in _iptables_lines(table) if line not in before]
            for line in added:
                if line.startswith("-A "):
                    _run("iptables", "-w", "-t", table, "-D", *shlex.split(line)[1:], check=False)
            for line in added:
                if line.startswith(":"):
                    chain = line[1:].split()[0]
                    _run("iptables", "-w", "-t", table, "-F", chain, check=False)
            for line in added:
                if line.startswith(":"):
                    _run("iptables", "-w", "-t", table, "-X", line[1:].split()[0], check=False)


def _iptables_lines(table: str) -> list[str]:
    """Rules and chain names of a table, without counters (comparable across time)."""
    if shutil.which("iptables-save") is None:
        return []
    lines = []
    for line in _run("iptables-save", "-t", table, check=False).splitlines():
        if line.startswith("-A "):
            lines.append(line)
        elif line.startswith(":"):
            lines.append(line.split()[0] + " -")
    return lines


def _kill_kubepods(existing: set[Path]) -> None:
    """SIGKILL every process in the pods' cgroups, then remove the cgroups the kubelet made."""
    roots = [root for root in CGROUP_ROOT.glob(f"*/{KUBEPODS}") if root not in existing]
    for root in roots:
        for group in _cgroups_under(root):
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for root in roots:
        for group in _cgroups_under(root):
            _remove_cgroup(group, deadline)


def _cgroups_under(root: Path) -> list[Path]:
    """``root`` and every cgroup below it, deepest first (rmdir order).

    os.walk skips directories that vanish while it walks (the kubelet and runc remove pod
    cgroups concurrently); Path.rglob raises, which once aborted the whole teardown.
    """
    return [Path(directory) for directory, _, _ in os.walk(root, topdown=False)]


def _remove_cgroup(group: Path, deadline: float) -> None:
    """rmdir a cgroup, retrying while its killed processes are being reaped."""
    while True:
        try:
            group.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        else:
            return


def _unmount_all_under(path: Path) -> None:
    for mount_point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)


class Node(Service):
    """containerd, kube-scheduler, kube-controller-manager and kubelet in ``work_dir``."""

    def __init__(self, control_plane: ControlPlane, work_dir: Path, *, pause_image: str,
                 insecure_registries: tuple[str, ...]) -> None:
        self.control_plane = control_plane
        self.work_dir = work_dir
        self.pause_image = pause_image
        self.insecure_registries = insecure_registries
        self.containerd_socket = work_dir / "containerd" / "containerd.sock"
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        """Start the components in FACTS.md's order and wait until the node is Ready."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        binaries = {name: str(kubernetes_binary(name))
                    for name in ("kubelet", "kube-scheduler", "kube-controller-manager")}
        self._spawn("containerd", ["containerd", "--config", str(self._containerd_config())])
        pki = self.control_plane.pki
        self._spawn("kube-scheduler", [
            binaries["kube-scheduler"],
            "--kubeconfig", str(self.control_plane.scheduler.kubeconfig),
            "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1",
            "--secure-port", str(free_port()),
        ])
        self._spawn("kube-controller-manager", [
            binaries["kube-controller-manager"],
            "--kubeconfig", str(self.control_plane.controller_manager.kubeconfig),
            "--leader-elect=false", "--port=0", "--bind-address=127.0.0.1",
            "--secure-port", str(free_port()),
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
        ])
        self._wait_for_socket()
        self._spawn("kubelet", [
            binaries["kubelet"], *self._kubelet_flags(),
        ])
        self._wait_ready()

    def _containerd_config(self) -> Path:
        """containerd's v2 config: private root/state/socket, FACTS.md's CRI settings."""
        base = self.work_dir / "containerd"
        cni_conf = self.work_dir / "cni"
        for directory in (base, cni_conf):
            directory.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-sandbox.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        cri = "io.containerd.grpc.v1.cri"
        mirrors = {host: {"endpoint": [f"http://{host}"]} for host in self.insecure_registries}
        config = {
            "version": 2,
            "root": str(base / "root"), "state": str(base / "state"),
            "grpc": {"address": str(self.containerd_socket)},
            "ttrpc": {"address": str(base / "containerd.sock.ttrpc")},
            "metrics": {"address": ""},
            "plugins": {
                "io.containerd.internal.v1.opt": {"path": str(base / "opt")},
                cri: {
                    "sandbox_image": self.pause_image,
                    # Required here: no CAP_SYS_RESOURCE, and without it every pod sandbox
                    # fails with "can't get final child's PID from pipe: EOF".
                    "restrict_oom_score_adj": True,
                    "disable_apparmor": True,
                    "disable_hugetlb_controller": True,
                    "tolerate_missing_hugetlb_controller": True,
                    "containerd": {
                        "snapshotter": "overlayfs",
                        "default_runtime_name": "runc",
                        "runtimes": {"runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {"SystemdCgroup": False,
                                        "Root": str(base / "runc")},
                        }},
                    },
                    "cni": {"bin_dir": str(CNI_PLUGINS), "conf_dir": str(cni_conf)},
                    "registry": {"mirrors": mirrors},
                },
            },
        }
        path = base / "config.toml"
        path.write_text(_toml(config))
        return path

    def _cni_config(self) -> dict[str, object]:
        """bridge + host-local + portmap on the sandbox bridge; IPAM state kept private."""
        return {
            "cniVersion": "0.4.0", "name": CNI_NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.work_dir / "ipam"),
                          "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_flags(self) -> list[str]:
        kubelet_dir = self.work_dir / "kubelet"
        socket = f"unix://{self.containerd_socket}"
        return [
            "--kubeconfig", str(self.control_plane.kubelet.kubeconfig),
            # The node's address is the bridge gateway (the kubelet refuses a loopback one);
            # its API there takes only the apiserver's client certificate: no anonymous
            # requests from pods on the bridge.
            "--hostname-override", NODE_NAME, "--node-ip", GATEWAY,
            "--address", GATEWAY, "--anonymous-auth=false",
            "--client-ca-file", str(self.control_plane.pki / "ca.crt"),
            "--authorization-mode=AlwaysAllow",
            "--container-runtime=remote", "--container-runtime-endpoint", socket,
            "--image-service-endpoint", socket, "--runtime-request-timeout=5m",
            "--cgroup-driver=cgroupfs", "--fail-swap-on=false",
            "--root-dir", str(kubelet_dir / "root"), "--cert-dir", str(kubelet_dir / "pki"),
            "--volume-plugin-dir", str(kubelet_dir / "volume-plugins"),
            "--port", str(free_port(GATEWAY)),
            "--healthz-bind-address=127.0.0.1", "--healthz-port=0", "--read-only-port=0",
            "--pod-infra-container-image", self.pause_image,
            "--make-iptables-util-chains=false", "--serialize-image-pulls=false",
            "--eviction-hard=memory.available<100Mi,nodefs.available<2%,imagefs.available<2%",
            "--resolv-conf=/etc/resolv.conf",
        ]

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.work_dir / f"{name}.log").open("wb") as log:
            self._processes.append((name, subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)))

    def _check_alive(self) -> None:
        for name, process in self._processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n" + self.logs())

    def _wait_for_socket(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.containerd_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not listen after {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def _wait_ready(self) -> None:
        api = client.CoreV1Api(_admin_client(self.control_plane))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(client.ApiException):
                status = api.read_node(NODE_NAME).status
                if status and any(c.type == "Ready" and c.status == "True"
                                  for c in status.conditions or []):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"node {NODE_NAME} not Ready after {READY_TIMEOUT}s:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        """The last lines of each component's log, for failure messages."""
        parts = []
        for log in sorted(self.work_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the kubelet first, then every container, the shims, and the rest, by PID."""
        processes, self._processes = self._processes, []
        for name, process in processes:
            if name == "kubelet":
                stop_group(process, timeout=10)
        _kill_kubepods(set())
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _, process in reversed(processes):
            stop_group(process, timeout=10)
        _unmount_all_under(self.work_dir)
        shutil.rmtree(self.work_dir / "containerd", ignore_errors=True)

    def _shim_pids(self) -> list[int]:
        """containerd's shims detach into their own process groups: find ours by socket."""
        needle = str(self.containerd_socket).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
                    pids.append(int(entry.name))
        return pids


def _admin_client(control_plane: ControlPlane) -> client.ApiClient:
    api_client: client.ApiClient = config.new_client_from_config(
        str(control_plane.admin.kubeconfig))
    return api_client


def _toml(config: dict[str, object], prefix: str = "") -> str:
    """The small TOML subset containerd's config needs (tables, strings, bools, lists)."""
    scalars, tables = [], []
    for key, value in config.items():
        name = key if all(c.isalnum() or c in "_-" for c in key) else f'"{key}"'
        if isinstance(value, dict):
            tables.append((f"{prefix}.{name}" if prefix else name, value))
        else:
            scalars.append(f"{name} = {_toml_value(value)}")
    text = ""
    if scalars:
        text += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n\n"
    for table, value in tables:
        text += _toml(value, table)
    return text


def _toml_value(value: object) -> str:
    # JSON strings are valid TOML basic strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
