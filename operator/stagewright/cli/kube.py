"""The CLI's only door to the cluster: the ``kubernetes`` client, configured as kubectl is.

The CLI runs as its user (not the operator's identity): the kubeconfig from ``KUBECONFIG`` or
``~/.kube/config`` (``--kubeconfig`` wins), the context from ``--context`` or the current one,
the namespace from ``-n`` or that context's. Watches, not polling, wait for changes; every call
the other CLI modules make goes through :class:`Kube`, so they stay free of client details.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, dynamic, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from stagewright.api.v1alpha1 import GROUP, PLURAL, VERSION
from stagewright.resources.pod_common import LABEL_IMAGEBUILD, imagebuild_label

__all__ = ["ApiException", "ConfigException", "Kube", "KubeTarget", "LogStream",
           "UnknownKindError"]



class UnknownKindError(ValueError):
    """A file names a kind the cluster does not serve (a CRD not installed, a typo)."""


_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class KubeTarget:
    """Where to connect, as the user asked (each None means: kubectl's default)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


class Kube:
    """A connection to one cluster and namespace, with the verbs the CLI needs."""

    def __init__(self, target: KubeTarget) -> None:
        self.api_client, default_namespace = _connect(target)
        self.namespace = target.namespace or default_namespace
        #: ``-n`` was given: a file's object in another namespace is then an error (kubectl's
        #: rule); without it, each object's own namespace wins.
        self.namespace_explicit = target.namespace is not None
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self._dynamic: dynamic.DynamicClient | None = None

    # ImageBuilds ------------------------------------------------------------------------

    def get_build(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """An ImageBuild, or None when there is none by that name."""
        try:
            found = _dict(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace or self.namespace, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list_builds(self, *, all_namespaces: bool = False) -> list[dict[str, Any]]:
        """ImageBuilds in the namespace (or everywhere), sorted by namespace and name."""
        if all_namespaces:
            found = _dict(self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        else:
            found = _dict(self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL))
        items: list[dict[str, Any]] = found.get("items") or []
        return sorted(items, key=lambda b: (b["metadata"].get("namespace", ""),
                                            b["metadata"]["name"]))

    def create_build(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Create an ImageBuild; the stored object comes back (generation 1)."""
        return _dict(self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body))

    def replace_build(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Replace an ImageBuild (optimistic: ``body`` carries the resourceVersion read)."""
        return _dict(self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"], body))

    def annotate_build(self, name: str, namespace: str, annotations: dict[str, str]
                       ) -> dict[str, Any]:
        """Merge annotations into an ImageBuild (the rebuild request)."""
        return _dict(self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"annotations": annotations}}))

    def watch_build(self, name: str, namespace: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The ImageBuild as it is now, then each change, until ``timeout`` seconds passed.

        Ends early when the object is deleted. One watch request, no polling.
        """
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
            field_selector=f"metadata.name={name}", timeout_seconds=max(1, int(timeout)))
        for event in stream:
            if event["type"] == "DELETED":
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                yield event["object"]

    # Other objects in a file (ConfigMap contexts, push Secrets) ----------------------------

    def apply_object(self, obj: dict[str, Any], namespace: str) -> str:
        """Create an object of any kind, or replace it when it exists; says which it did."""
        if self._dynamic is None:
            self._dynamic = dynamic.DynamicClient(self.api_client)
        try:
            resource = self._dynamic.resources.get(api_version=obj["apiVersion"],
                                                   kind=obj["kind"])
        except dynamic.exceptions.ResourceNotFoundError:
            raise UnknownKindError(f"the cluster serves no {obj['kind']} in "
                                   f"{obj['apiVersion']}") from None
        target_namespace = namespace if resource.namespaced else None
        if target_namespace is None:  # a cluster-scoped object (a Namespace) has none
            obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items()
                                       if k != "namespace"}}
        name = obj["metadata"]["name"]
        try:
            current = resource.get(name=name, namespace=target_namespace)
        except dynamic.exceptions.NotFoundError:
            resource.create(body=obj, namespace=target_namespace)
            return "created"
        body = {**obj, "metadata": {**obj["metadata"],
                                    "resourceVersion": current.metadata.resourceVersion}}
        resource.replace(body=body, name=name, namespace=target_namespace)
        return "configured"

    def config_map_data(self, name: str, namespace: str) -> dict[str, str]:
        """A ConfigMap's data, or nothing when it is absent or not readable by the user."""
        try:
            found = self.core.read_namespaced_config_map(name, namespace)
        except ApiException:
            return {}
        return dict(found.data or {})

    # Pods, logs and events ----------------------------------------------------------------

    def build_pods(self, name: str, namespace: str) -> list[dict[str, Any]]:
        """The ImageBuild's build pods (every generation and attempt still there)."""
        found = self.core.list_namespaced_pod(
            namespace, label_selector=f"{LABEL_IMAGEBUILD}={imagebuild_label(name)}")
        return [self.api_client.sanitize_for_serialization(pod) for pod in found.items]

    def get_pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        """A pod as a dict (camelCase keys, as the API serves it), or None."""
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] = self.api_client.sanitize_for_serialization(pod)
        return found

    def watch_pod(self, name: str, namespace: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The pod now, then each change (as dicts), until deleted or ``timeout`` passed."""
        stream = watch.Watch().stream(
            self.core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, int(timeout)))
        for event in stream:
            if event["type"] == "DELETED":
                return
            yield self.api_client.sanitize_for_serialization(event["object"])

    def open_log(self, pod: str, namespace: str, container: str, *, follow: bool) -> LogStream:
        """A container's log as a stream of lines (read on a thread, so waits can time out)."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=follow, _preload_content=False)
        return LogStream(response)

    def events_for(self, kind: str, name: str, namespace: str) -> list[dict[str, Any]]:
        """Events about one object, oldest first."""
        found = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
        events = [self.api_client.sanitize_for_serialization(e) for e in found.items]
        return sorted(events, key=lambda e: str(e.get("lastTimestamp")
                                                or e.get("eventTime") or ""))


class LogStream:
    """Lines of a followed log, read by a daemon thread into a queue.

    A followed log blocks until the container writes; reading on a thread lets the caller
    wait with a timeout (to refresh progress and honour ``--timeout``) and stop at will.
    """

    _END = object()

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lines: queue.Queue[object] = queue.Queue()
        self.ended = False
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        try:
            for chunk in self._response.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._lines.put(line.decode(errors="replace"))
        except Exception as exc:  # a dropped stream is reported by the caller, not raised
            self.error = exc
        finally:
            if pending:  # a last line without a newline, or cut off by a broken stream
                self._lines.put(pending.decode(errors="replace"))
            self._lines.put(self._END)

    def next_line(self, timeout: float) -> str | None:
        """The next line, or None if none came within ``timeout`` (check ``ended``)."""
        if self.ended:
            return None
        try:
            item = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if item is self._END:
            self.ended = True
            return None
        return str(item)

    def close(self) -> None:
        """Stop reading, at once even while the container is silent.

        Closing the response would wait for the reading thread's buffer lock, which it holds
        until the next byte comes (seen: a timed-out follow hung until the build ended); shutting
        the socket down ends that read instead, and the thread with it.
        """
        if not self._thread.is_alive():
            self._response.release_conn()
            return
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)


def _connect(target: KubeTarget) -> tuple[Any, str]:
    """An API client and the default namespace, from a kubeconfig or, in a pod, in-cluster."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=_kubeconfig(target), context=target.context,
                                client_configuration=configuration)
    except ConfigException:
        if target.kubeconfig or target.context or not _IN_CLUSTER_NAMESPACE.exists():
            raise
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration), _IN_CLUSTER_NAMESPACE.read_text().strip()
    return client.ApiClient(configuration), _context_namespace(target)


def _context_namespace(target: KubeTarget) -> str:
    """The namespace of the chosen (or current) context, "default" when it names none."""
    contexts, current = config.list_kube_config_contexts(config_file=_kubeconfig(target))
    chosen = current
    if target.context:
        chosen = next((c for c in contexts if c.get("name") == target.context), current)
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")



def _kubeconfig(target: KubeTarget) -> str | None:
    """``--kubeconfig``, else ``KUBECONFIG`` as set now (a path list, merged as kubectl does)."""
    return target.kubeconfig or os.environ.get("KUBECONFIG") or None


def _dict(value: object) -> dict[str, Any]:
    """A custom-object answer, which the client returns as a plain dict."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object from the API server, got {type(value).__name__}")
    return value
