"""Status reasons: the machine-readable half of every phase, in one place.

Users and GitOps tools script against these strings, so they are part of the API.
"""

from enum import StrEnum


class Reason(StrEnum):
    """Why an ImageBuild is in its phase (status.reason and condition reasons)."""

    #: The API server's default status: applied, not yet seen by the operator.
    AWAITING_OPERATOR = "AwaitingOperator"
    BUILDING = "Building"
    QUEUED = "Queued"
    WAITING = "PodWaiting"
    UNSCHEDULABLE = "Unschedulable"
    REFERENCE_NOT_FOUND = "ReferenceNotFound"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    INVALID_SPEC = "InvalidSpec"
    POD_CONFLICT = "PodConflict"
    POD_REJECTED = "PodRejected"
    REGISTRY_NOT_ALLOWED = "RegistryNotAllowed"
    BUILD_FAILED = "BuildFailed"
    PUSH_FAILED = "PushFailed"
    OUT_OF_MEMORY = "OutOfMemory"
    TIMEOUT = "Timeout"
    EVICTED = "Evicted"
    POD_LOST = "PodLost"
    DIGEST_UNVERIFIED = "DigestUnverified"
    SIZE_BUDGET_EXCEEDED = "SizeBudgetExceeded"
    CHECK_FAILED = "CheckFailed"
    #: A platform's build was stopped because another platform of the same build failed.
    CANCELLED = "Cancelled"
    #: A platform's image says another platform in its config than the one asked.
    PLATFORM_MISMATCH = "PlatformMismatch"
    #: A trigger started a build (a Normal Event, not a phase).
    TRIGGERED = "Triggered"
    #: Signing (conditions Signed and Attested; a build's reason when spec.signing.required).
    SIGNED = "Signed"
    ATTESTED = "Attested"
    SIGNING_KEY_NOT_FOUND = "SigningKeyNotFound"
    SIGNING_KEY_INVALID = "SigningKeyInvalid"
    SIGNING_KEY_UNSUPPORTED = "SigningKeyUnsupported"
    SIGNATURE_PUSH_FAILED = "SignaturePushFailed"


#: Failures of the infrastructure, not of the build: retried up to spec.retries times.
INFRASTRUCTURE_FAILURES = frozenset({Reason.EVICTED, Reason.POD_LOST})

#: Reasons a person should see in ``kubectl describe``: each becomes a Warning Event once.
#: Progress (Building, Succeeded) posts none, so a happy build stays at three API writes.
WARNINGS = frozenset({
    Reason.WAITING, Reason.UNSCHEDULABLE, Reason.REFERENCE_NOT_FOUND, Reason.RETRYING,
    Reason.INVALID_SPEC, Reason.POD_CONFLICT, Reason.POD_REJECTED, Reason.BUILD_FAILED,
    Reason.REGISTRY_NOT_ALLOWED,
    Reason.PUSH_FAILED, Reason.OUT_OF_MEMORY, Reason.TIMEOUT, Reason.EVICTED, Reason.POD_LOST,
    Reason.DIGEST_UNVERIFIED, Reason.SIZE_BUDGET_EXCEEDED, Reason.CHECK_FAILED,
    Reason.PLATFORM_MISMATCH,
    Reason.SIGNING_KEY_NOT_FOUND, Reason.SIGNING_KEY_INVALID, Reason.SIGNING_KEY_UNSUPPORTED,
    Reason.SIGNATURE_PUSH_FAILED,
})
