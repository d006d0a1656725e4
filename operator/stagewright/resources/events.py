"""Build the Kubernetes Event that tells a person about an ImageBuild: pure, no I/O.

Only what needs a person becomes an Event (a failure, a retry, a build that cannot start),
as a ``Warning``: a happy build posts none, so it still costs three API writes.
"""

from __future__ import annotations

import time
from typing import Any

from stagewright.api.v1alpha1 import API_VERSION, KIND

#: The component name ``kubectl describe`` shows as the Event's source.
COMPONENT = "stagewright"
#: The API server accepts longer messages, but kubectl and dashboards show about this much.
MESSAGE_LIMIT = 1024
_MAX_NAME = 253


def build_event(metadata: dict[str, Any], *, reason: str, message: str, now: str,
                event_type: str = "Warning", api_version: str = API_VERSION,
                kind: str = KIND) -> dict[str, Any]:
    """A core/v1 Event about the ImageBuild (or the object of ``kind``) whose ``metadata``
    is given.

    The name follows client-go (``<object>.<hex nanoseconds>``), so Events of one object sort
    by time and never collide.
    """
    name = str(metadata["name"])
    suffix = f".{time.time_ns():x}"
    text = message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name[: _MAX_NAME - len(suffix)] + suffix,
                     "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": api_version, "kind": kind, "name": name,
            "namespace": metadata["namespace"], "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "reason": reason,
        "message": text,
        "type": event_type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
