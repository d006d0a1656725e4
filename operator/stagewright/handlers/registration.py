"""kopf wiring: which events reach the reconciler, and the operator's start-up and shutdown.

Only event handlers and an in-memory index are registered. kopf therefore writes nothing of
its own to the cluster: no finalizer, no progress or diff-base annotations, no per-pod
bookkeeping. All state is in ImageBuild status, written by the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from stagewright.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    REBUILD_ANNOTATION,
    VERSION,
    Phase,
)
from stagewright.handlers.kube_api import ApiError, KubeApi, load_configuration
from stagewright.handlers.reconciler import Reconciler
from stagewright.registry import RegistryClient, RegistryError
from stagewright.resources.kaniko_pod import LABEL_MANAGED_BY, MANAGED_BY
from stagewright.settings import Settings

_SETTLED = (Phase.SUCCEEDED.value, Phase.FAILED.value)
_log = logging.getLogger("stagewright")


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: our own prefix wherever kopf would write, no peering, quiet posting."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration",
    )
    settings.peering.standalone = True
    # kopf watches CRDs (RBAC: list, watch), so ImageBuilds are served even when their CRD
    # is established after the operator starts, as with `kubectl apply -k manifests/`.
    settings.scanning.disabled = False
    # The reconciler posts the Events a person needs itself (api.reasons.WARNINGS), from any
    # task, resync included. kopf's posting of log lines stays off, so a log line never costs
    # an API write and a happy build stays at three (pod, status Building, status Succeeded).
    settings.posting.loggers = False


@kopf.on.startup(id="start")
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Create the API client and reconciler, and start the periodic resync."""
    configure(settings)
    # kopf passes each index by its handler id; it is filled as ImageBuilds are listed.
    unsettled: kopf.Index[tuple[str, str], bool] = kwargs["unsettled"]
    operator_settings: Settings = memo.get("settings") or Settings()
    memo.clients = clients = contextlib.AsyncExitStack()
    api = await clients.enter_async_context(KubeApi(load_configuration()))
    # One registry client for the operator's life: its bearer tokens are reused across builds.
    registry = await clients.enter_async_context(
        RegistryClient(timeout=operator_settings.registry_timeout_seconds,
                       ca_bundle=operator_settings.ca_bundle_file,
                       allow=operator_settings.registry_allow))
    memo.reconciler = Reconciler(api, registry, operator_settings, kopf_settings=settings)
    memo.resync = asyncio.create_task(_resync(memo.reconciler, unsettled, operator_settings))


@kopf.on.cleanup(id="stop")
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync and close connections."""
    task: asyncio.Task[None] | None = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    clients: contextlib.AsyncExitStack | None = memo.get("clients")
    if clients is not None:
        await clients.aclose()


@kopf.index(GROUP, VERSION, PLURAL, id="unsettled")
def unsettled(namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
              annotations: kopf.Annotations, **_: Any) -> dict[tuple[str, str], bool] | None:
    """ImageBuilds whose current generation or rebuild request has not finished building."""
    done = (status.get("phase") in _SETTLED
            and status.get("observedGeneration") == meta.get("generation")
            and status.get("rebuild") == (annotations.get(REBUILD_ANNOTATION) or None))
    return None if done else {(namespace or "", name): True}


@kopf.on.event(GROUP, VERSION, PLURAL, id="imagebuild")
async def on_imagebuild(event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo,
                        **_: Any) -> None:
    """Any change to an ImageBuild (and each one at start-up): take the next step."""
    reconciler: Reconciler = memo.reconciler
    namespace = namespace or ""  # ImageBuilds are namespaced; kopf's type allows None
    if event["type"] == "DELETED":
        reconciler.forget(namespace, name)  # its pods go with it (owner references)
        return
    await _reconcile(reconciler, namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="build-pod")
async def on_build_pod(namespace: str | None, meta: kopf.Meta, memo: kopf.Memo,
                       **_: Any) -> None:
    """A build pod changed: re-check the ImageBuild that owns it."""
    owner = next((ref.get("name") for ref in meta.get("ownerReferences") or []
                  if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION), None)
    if owner and namespace:
        await _reconcile(memo.reconciler, namespace, owner)


async def _reconcile(reconciler: Reconciler, namespace: str, name: str) -> None:
    """Reconcile, turning failures into a log line: the resync retries unsettled builds."""
    try:
        await reconciler.reconcile(namespace, name)
    except (ApiError, RegistryError) as exc:
        log = _log.warning if exc.temporary else _log.error
        log(f"Reconciling {namespace}/{name} failed, will retry: {exc}")


async def _resync(reconciler: Reconciler, unsettled: kopf.Index[tuple[str, str], bool],
                  settings: Settings) -> None:
    """Re-check unfinished builds periodically: level-based recovery from anything missed."""
    while True:
        await asyncio.sleep(settings.resync_seconds)
        for namespace, name in list(unsettled):
            try:
                await _reconcile(reconciler, namespace, name)
            except Exception:  # one broken object must not end the resync of all others
                _log.exception(f"Resync of {namespace}/{name} failed")
