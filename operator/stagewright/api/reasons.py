"""Status reasons: the machine-readable half of every phase, in one place.

Users and GitOps tools script against these strings, so they are part of the API.
"""

from enum import StrEnum


class Reason(StrEnum):
    """Why an ImageBuild is in its phase (status.reason and condition reasons)."""

    BUILDING = "Building"
    QUEUED = "Queued"
    WAITING = "PodWaiting"
    REFERENCE_NOT_FOUND = "ReferenceNotFound"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    INVALID_SPEC = "InvalidSpec"
    POD_CONFLICT = "PodConflict"
    POD_REJECTED = "PodRejected"
    BUILD_FAILED = "BuildFailed"
    PUSH_FAILED = "PushFailed"
    OUT_OF_MEMORY = "OutOfMemory"
    TIMEOUT = "Timeout"
    EVICTED = "Evicted"
    POD_LOST = "PodLost"
    DIGEST_UNVERIFIED = "DigestUnverified"


#: Failures of the infrastructure, not of the build: retried up to spec.retries times.
INFRASTRUCTURE_FAILURES = frozenset({Reason.EVICTED, Reason.POD_LOST})
