"""What a build pod says about its build, its log read when the pod's own status cannot say."""

from __future__ import annotations

from typing import Any

from stagewright.api.v1alpha1 import ImageBuild
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.settings import Settings
from stagewright.status import PodOutcome, build_terminated, classify_log, classify_pod

#: How much of a failed build's log is read when its termination message holds only a digest.
FAILURE_LOG_LINES = 400
FAILURE_LOG_BYTES = 64 * 1024


async def pod_outcome(api: KubeApi, settings: Settings, build: ImageBuild,
                      pod: dict[str, Any]) -> PodOutcome:
    """The pod's outcome (``status.classify_pod``), told from its log's tail where a failed
    push and a failed step look alike (``PodOutcome.log_needed``)."""
    outcome = classify_pod(pod, message_limit=settings.message_limit)
    if not outcome.log_needed:
        return outcome
    try:
        text = await api.read_pod_log(build.namespace, pod["metadata"]["name"],
                                      build.spec.builder.value, FAILURE_LOG_BYTES,
                                      tail_lines=FAILURE_LOG_LINES)
    except ApiError:
        return outcome  # no pods/log: the termination message's fallback stands
    if not text:
        return outcome
    terminated = build_terminated(pod)
    return classify_log(int(terminated.get("exitCode", 1)), text, settings.message_limit,
                        build.spec.builder)
