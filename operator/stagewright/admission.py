"""What the API server's refusal to admit a build pod means for the build.

A pod create is refused for reasons a person must fix (a spec that makes an invalid Pod, Pod
Security, a policy webhook, the operator's RBAC), for reasons that pass on their own (a
ResourceQuota, a ServiceAccount not made yet), or because the namespace is being deleted.
Only the first fail the build; the second wait, with the resync trying again; the last end
quietly with the ImageBuild. Pure: the reconciler writes what this decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from stagewright.api.reasons import Reason

#: The ServiceAccount admission plugin's refusal of a pod whose account does not exist (yet).
_NO_SERVICE_ACCOUNT = re.compile(r'error looking up service account [^/\s]+/([^:\s]+): '
                                 r'serviceaccount "[^"]*" not found')


class Answer(Enum):
    """What the build does about a refused pod."""

    #: A person must change something: the build ends Failed, saying what.
    FAIL = "fail"
    #: It passes on its own: the build stays Pending and launches on a later reconcile.
    WAIT = "wait"
    #: The namespace is going away with the ImageBuild: nothing to write or tell.
    DROP = "drop"


@dataclass(frozen=True)
class Refusal:
    """A refused build pod, as the build's status should say it."""

    answer: Answer
    reason: Reason
    message: str


def pod_refusal(status: int, message: str, namespace: str) -> Refusal | None:
    """What a refused pod create (HTTP ``status``, the API server's ``message``) means, or
    None for a refusal no status can answer (the caller raises, and the handler retries)."""
    if status in (400, 422):
        # The spec passed the CRD schema but makes an invalid Pod (e.g. a bad quantity).
        return Refusal(Answer.FAIL, Reason.INVALID_SPEC,
                       f"The API server rejected the build pod: {message}")
    if status != 403:
        return None
    if "being terminated" in message:
        return Refusal(Answer.DROP, Reason.POD_REJECTED,
                       f"Not retrying: namespace {namespace} is being deleted.")
    account = _NO_SERVICE_ACCOUNT.search(message)
    if account:
        # A namespace created a moment ago has no default account until the
        # controller-manager makes it (a file that creates the namespace and its ImageBuild
        # together), or spec.serviceAccountName names one not made yet.
        return Refusal(Answer.WAIT, Reason.REFERENCE_NOT_FOUND,
                       f"Waiting for ServiceAccount {account.group(1)} in namespace "
                       f"{namespace}; the build starts when it exists.")
    if "exceeded quota: " in message or "status unknown for quota: " in message:
        # A ResourceQuota that is full, or so new that the controller-manager has not counted
        # its use yet: the build starts when capacity frees up or the count is in. (A quota
        # the pod does not fit at all, "failed quota: ... must specify limits.cpu", fails.)
        return Refusal(Answer.WAIT, Reason.POD_REJECTED, message)
    # Pod Security admission, a policy webhook, or the operator's own RBAC.
    return Refusal(Answer.FAIL, Reason.POD_REJECTED,
                   f"The API server refused the build pod: {message}")
