"""What a refused build pod means for the build (stagewright.admission), on the API server's
own words: kube-apiserver's messages for each refusal, in the formats its admission plugins
write them (the quota ones as the v1.20 binary we build carries them)."""

from __future__ import annotations

import pytest

from stagewright.admission import Answer, pod_refusal
from stagewright.api.reasons import Reason

NS = "team-a"
POD = "web-build-1-a1"


@pytest.mark.parametrize(("status", "message", "answer", "reason"), [
    # An invalid Pod the CRD schema let through: a person must fix the spec.
    (422, f'Pod "{POD}" is invalid: spec.containers[0].resources.requests: Invalid value: '
          '"2": must be less than or equal to cpu limit of 1', Answer.FAIL, Reason.INVALID_SPEC),
    (400, "the body of the request was in an unknown format", Answer.FAIL, Reason.INVALID_SPEC),
    # Pod Security admission: fails, saying what the namespace's level forbids.
    (403, f'pods "{POD}" is forbidden: violates PodSecurity "restricted:latest": '
          'allowPrivilegeEscalation != false', Answer.FAIL, Reason.POD_REJECTED),
    # A ResourceQuota: waits until capacity frees up.
    (403, f'pods "{POD}" is forbidden: exceeded quota: compute, requested: requests.cpu=2, '
          "used: requests.cpu=0, limited: requests.cpu=1", Answer.WAIT, Reason.POD_REJECTED),
    # A quota made a moment ago, not counted yet by the controller-manager: waits.
    (403, f'pods "{POD}" is forbidden: status unknown for quota: compute, resources: pods',
     Answer.WAIT, Reason.POD_REJECTED),
    # A quota the pod cannot fit as written: a person must set limits.
    (403, f'pods "{POD}" is forbidden: failed quota: compute: must specify limits.cpu',
     Answer.FAIL, Reason.POD_REJECTED),
    # No ServiceAccount yet: waits for it.
    (403, f'pods "{POD}" is forbidden: error looking up service account {NS}/builder: '
          'serviceaccount "builder" not found', Answer.WAIT, Reason.REFERENCE_NOT_FOUND),
    # The namespace is going away, the ImageBuild with it.
    (403, f'pods "{POD}" is forbidden: unable to create new content in namespace {NS} because '
          "it is being terminated", Answer.DROP, Reason.POD_REJECTED),
])
def test_each_refusal_fails_waits_or_drops_the_build(status: int, message: str, answer: Answer,
                                                     reason: Reason) -> None:
    refusal = pod_refusal(status, message, NS)
    assert refusal is not None
    assert (refusal.answer, refusal.reason) == (answer, reason)


def test_a_missing_account_is_named_with_its_namespace() -> None:
    refusal = pod_refusal(403, f'pods "{POD}" is forbidden: error looking up service account '
                          f'{NS}/default: serviceaccount "default" not found', NS)
    assert refusal is not None
    assert refusal.message == (f"Waiting for ServiceAccount default in namespace {NS}; the "
                               "build starts when it exists.")


def test_a_failure_carries_the_api_servers_words_for_the_person_who_must_fix_it() -> None:
    words = f'pods "{POD}" is forbidden: violates PodSecurity "baseline:latest": privileged'
    refusal = pod_refusal(403, words, NS)
    assert refusal is not None
    assert refusal.message == f"The API server refused the build pod: {words}"


@pytest.mark.parametrize("status", [401, 404, 409, 429, 500, 503])
def test_refusals_no_status_can_answer_are_left_to_the_caller(status: int) -> None:
    """Conflicts, throttling and outages are not the spec's fault: the handler retries."""
    assert pod_refusal(status, "the server is currently unable to handle the request",
                       NS) is None
