"""Generated bad input on the real apiserver: every ImageBuild is refused or told what to fix.

Hypothesis generates ImageBuilds of four kinds: valid ones (with hostile but legal values:
shell metacharacters, unicode, 16 KiB strings), near-misses (one field wrong), wrong types,
and unknown fields. Each is applied to the real kube-apiserver with the CRD from ``crds/``;
the operator (a real ``stagewright run``) then sees every accepted one. What must hold:

- an object the API server rejects is rejected with a message naming the wrong field;
- an accepted object ends with a status that says what to fix: ``InvalidSpec`` naming the
  field, or (valid ones, whose ConfigMap does not exist) ``ReferenceNotFound`` naming it;
- nothing loops: once settled, no object is written again across several resyncs;
- the operator logs no traceback, and no build pod runs a shell.

A few valid ones with hostile values are then really built, and their label values are read
back from the pushed image's config, byte for byte.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

#: How many ImageBuilds to generate (the issue asks for at least 2,000).
EXAMPLES = int(os.environ.get("STAGEWRIGHT_FUZZ_EXAMPLES", "2000"))
#: A ConfigMap no test creates: valid objects wait for it, saying so.
MISSING_CONTEXT = "no-such-context"
SETTLE_TIMEOUT = 240.0

#: Values no build argument or label should turn into a command.
HOSTILE = st.sampled_from([
    "$(touch /pwned)", "`id`", "a; rm -rf /", "x && reboot", "'\"\\", "|cat /etc/shadow",
    "${HOME}", "\n--destination=evil.example/x", "--cache-repo=evil", "%s%n", "\x7f",
    "emoji 🚀 ünïcödé", "\u202eRTL", "NUL-free but long " + "z" * 16384,
])
#: Not empty: the sandbox's kube-apiserver (1.20, built with Debian's reflect2 1.0.2, see
#: FACTS.md) decodes "" inside a custom resource's map as null and rejects it ("must be of
#: type string"), which a stock apiserver does not; that quirk is not ours to test.
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
ARG_NAME = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z")
TAG = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\Z")
STAGE = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,30}\Z")


@dataclass(frozen=True)
class Case:
    """One generated ImageBuild and the field a person must fix (None: it is valid)."""

    kind: str
    spec: dict[str, Any]
    wrong_field: str | None = None
    name_override: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def _valid_spec(registry: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "source": st.just({"configMap": {"name": MISSING_CONTEXT}}),
        "output": st.fixed_dictionaries({
            "image": st.just(f"{registry}/fuzz/app"),
            "tags": st.lists(TAG, min_size=1, max_size=3, unique=True),
            "insecure": st.just(True),
            "labels": st.dictionaries(st.from_regex(r"\Aorg\.example\.[a-z]{1,8}\Z"),
                                      HOSTILE | SAFE_TEXT, max_size=3),
        }),
        "buildArgs": st.dictionaries(ARG_NAME, HOSTILE | SAFE_TEXT, max_size=4),
        "target": STAGE,
        "retries": st.integers(0, 5),
        "timeout": st.sampled_from(["90s", "20m", "1h30m"]),
    })


#: (field a person must fix, where it goes, bad values). Each is a near-miss: one field wrong.
NEAR_MISSES: list[tuple[str, tuple[str, ...], list[Any]]] = [
    ("output.image", ("output", "image"),
     ["Registry.Example.com/UPPER", "reg.example/app:tag", "reg.example/app@sha256:abc", "",
      " spaced ", "a" * 300, "reg.example/$(id)"]),
    ("output.tags", ("output", "tags"), [["-bad"], ["with space"], ["t" * 200], ["$(reboot)"],
                                         [], ["a", "a"]]),
    ("target", ("target",), ["has space", "-dash", "a;rm -rf /", "x" * 200, ""]),
    ("timeout", ("timeout",), ["thirty", "10", "-5m", "0s"]),
    ("retries", ("retries",), [9, -1]),
    ("dockerfile", ("dockerfile",), ["../Dockerfile", "/etc/passwd", "a//b", "./.."]),
    ("contextDir", ("source", "contextDir"), ["../up", "/abs", ".."]),
    ("buildArgs", ("buildArgs",), [{"BAD-NAME": "x"}, {"1X": "y"}, {"": "z"},
                                   {"A B": "c"}]),
    ("cache.ttl", ("cache", "ttl"), ["forever", "1d"]),
    ("configMap.name", ("source", "configMap", "name"), ["Bad_Name", "UPPER", "a" * 300]),
    ("pushSecretRef.name", ("output", "pushSecretRef", "name"), ["Not Valid", "UP"]),
    ("serviceAccountName", ("serviceAccountName",), ["not valid!", "-x"]),
    ("tolerations", ("tolerations",), [[{"operator": "Sometimes"}], [{"effect": "Never"}]]),
]
#: Replacing the source: exactly one of git, configMap or url.
BAD_SOURCES: list[dict[str, Any]] = [
    {}, {"configMap": {"name": "a"}, "url": "s3://bucket/ctx.tar.gz"},
    {"git": {"url": "ftp://example.org/repo.git"}},
    {"git": {"url": "file:///etc/passwd"}},
    {"git": {"url": "https://example.org/repo.git#frag"}},
    {"git": {"url": "https://example.org/r.git", "revision": "has space"}},
    {"url": "http://plain.example/ctx.tar.gz"}, {"url": "file:///ctx"},
]
#: (field, where, a value of the wrong JSON type).
WRONG_TYPES: list[tuple[str, tuple[str, ...], Any]] = [
    ("retries", ("retries",), "three"), ("buildArgs", ("buildArgs",), ["A=b"]),
    ("output.tags", ("output", "tags"), "latest"), ("cache.enabled", ("cache", "enabled"), "yes"),
    ("output", ("output",), "registry.example/app"), ("nodeSelector", ("nodeSelector",), [1]),
    ("labels", ("output", "labels"), {"k": 5}), ("source", ("source",), ["configMap"]),
    ("timeout", ("timeout",), 600), ("target", ("target",), {"name": "x"}),
]
BAD_NAMES = ["UPPER", "under_score", "ünïcode", "a" * 254, "-lead", "dot..dot"]


def _set(spec: dict[str, Any], where: tuple[str, ...], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(spec)
    target = result
    for part in where[:-1]:
        target = target.setdefault(part, {})
    target[where[-1]] = value
    return result


def cases(registry: str) -> st.SearchStrategy[Case]:
    """Valid, near-miss, wrong-type, bad-name and unknown-field ImageBuilds, mixed."""
    valid = _valid_spec(registry)
    near_miss = st.tuples(valid, st.sampled_from(NEAR_MISSES)).flatmap(
        lambda vm: st.sampled_from(vm[1][2]).map(
            lambda bad: Case("near-miss", _set(vm[0], vm[1][1], bad), vm[1][0])))
    bad_source = st.tuples(valid, st.sampled_from(BAD_SOURCES)).map(
        lambda vs: Case("near-miss", {**vs[0], "source": vs[1]}, "source"))
    wrong_type = st.tuples(valid, st.sampled_from(WRONG_TYPES)).map(
        lambda vw: Case("wrong-type", _set(vw[0], vw[1][1], vw[1][2]), vw[1][0]))
    bad_name = st.tuples(valid, st.sampled_from(BAD_NAMES)).map(
        lambda vn: Case("bad-name", vn[0], "metadata.name", name_override=vn[1]))
    unknown = st.tuples(valid, st.from_regex(r"\A[a-z][a-zA-Z]{2,12}\Z")).map(
        lambda vu: Case("unknown-field", {**vu[0], f"x{vu[1]}": "dropped"}, None))
    return st.one_of(valid.map(lambda spec: Case("valid", spec)), near_miss, near_miss,
                     bad_source, wrong_type, bad_name, unknown)


@dataclass
class Ledger:
    """What happened to each generated object."""

    accepted: dict[str, Case] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    wrongly_rejected: list[str] = field(default_factory=list)
    unnamed_rejections: list[str] = field(default_factory=list)


def _apply(sandbox: Sandbox, namespace: str, case: Case, index: int, ledger: Ledger) -> None:
    name = case.name_override or f"fuzz-{index}"
    body = {"apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": namespace, **case.extra_metadata},
            "spec": case.spec}
    try:
        sandbox.admin.resource(IMAGEBUILD_API, "ImageBuild").create(body=body,
                                                                   namespace=namespace)
    except ApiException as exc:
        message = json.loads(exc.body).get("message", "") if exc.body else str(exc)
        ledger.outcomes["rejected"] += 1
        if case.wrong_field is None:
            ledger.wrongly_rejected.append(
                f"{case.kind} {name}: {message[:300]} ({json.dumps(case.spec)[:300]})")
        elif case.wrong_field.split(".")[-1] not in message:
            ledger.unnamed_rejections.append(
                f"{case.kind} {case.wrong_field} {json.dumps(case.spec)[:300]}: {message[:300]}")
        return
    ledger.accepted[name] = case


def _settled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("reason") in ("InvalidSpec", "ReferenceNotFound", "Succeeded",
                                    "BuildFailed")


def _all(sandbox: Sandbox, namespace: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in sandbox.admin.list(IMAGEBUILD_API, "ImageBuild",
                                                                  namespace)}


def _wait_all_settled(sandbox: Sandbox, namespace: str, names: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        objects = _all(sandbox, namespace)
        waiting = [n for n in names if not _settled(objects.get(n, {}))]
        if not waiting:
            return objects
        if time.monotonic() > deadline:
            sample = {n: (objects.get(n) or {}).get("status") for n in waiting[:5]}
            pytest.fail(f"{len(waiting)} ImageBuilds never got a status saying what to fix; "
                        f"e.g. {json.dumps(sample)[:2000]}")
        time.sleep(2)


def _check_told_what_to_fix(case: Case, obj: dict[str, Any]) -> str | None:
    status = obj["status"]
    if case.wrong_field is None:
        if status["reason"] != "ReferenceNotFound" or MISSING_CONTEXT not in status["message"]:
            return f"valid {case.kind} ended {status['reason']}: {status['message'][:200]}"
        return None
    if status["reason"] != "InvalidSpec":
        return (f"{case.wrong_field} wrong, yet {status['reason']}: "
                f"{status['message'][:200]} ({json.dumps(case.spec)[:200]})")
    if case.wrong_field.split(".")[-1] not in status["message"]:
        return f"InvalidSpec does not name {case.wrong_field}: {status['message'][:200]}"
    return None


@pytest.mark.faults  # 2,000 objects through the operator: in the faults tier (make test-faults)
def test_generated_imagebuilds_are_refused_or_told_what_to_fix(
        sandbox: Sandbox, namespace: str) -> None:
    ledger = Ledger()
    counter = iter(range(10**6))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases(sandbox.registry.host))
    def apply_one(case: Case) -> None:
        ledger.outcomes[f"generated {case.kind}"] += 1
        _apply(sandbox, namespace, case, next(counter), ledger)

    apply_one()
    assert sum(v for k, v in ledger.outcomes.items() if k.startswith("generated")) >= EXAMPLES
    assert ledger.wrongly_rejected == [], "\n".join(ledger.wrongly_rejected[:10])
    assert ledger.unnamed_rejections == []

    objects = _wait_all_settled(sandbox, namespace, set(ledger.accepted))
    problems = [p for name, case in ledger.accepted.items()
                if (p := _check_told_what_to_fix(case, objects[name]))]
    assert problems == [], "\n".join(problems[:20])
    ledger.outcomes.update(obj["status"]["reason"] for obj in objects.values())

    # No loop: a settled object is not written again across several resyncs (2 s each).
    versions = {n: o["metadata"]["resourceVersion"] for n, o in objects.items()}
    time.sleep(8)
    rewritten = [n for n, o in _all(sandbox, namespace).items()
                 if versions.get(n) != o["metadata"]["resourceVersion"]]
    assert rewritten == []
    assert "Traceback" not in sandbox.operator.log()
    assert sandbox.admin.list("v1", "Pod", namespace) == []  # nothing valid had its context
    print("\nbad-input report:", dict(sorted(ledger.outcomes.items())))
    # Hundreds stay Pending (their ConfigMap never comes): later tests restart the operator,
    # which would start with all of them to re-check. Leave the cluster as we found it.
    sandbox.admin.delete("v1", "Namespace", namespace)
    sandbox.admin.wait_gone("v1", "Namespace", namespace, timeout=180)


HOSTILE_LABELS = {
    "org.example.subst": "$(touch /pwned)",
    "org.example.quote": "'\"\\` ; rm -rf / #",
    "org.example.flag": "\n--destination=evil.example/x",
    "org.example.unicode": "ünïcödé 🚀 \u202eRTL",
}


def test_hostile_values_are_built_as_data(sandbox: Sandbox, namespace: str) -> None:
    """Shell metacharacters in labels and build args reach Kaniko as data, never as code."""
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "ctx", "namespace": namespace},
                          "data": {"Dockerfile": "ARG BASE\nFROM ${BASE}\nARG NOTE\n"
                                                 "RUN printf '%s' \"$NOTE\" > /note\n"}}])
    sandbox.admin.apply([{
        "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
        "metadata": {"name": "hostile", "namespace": namespace},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "buildArgs": {"BASE": sandbox.base_image, "NOTE": "$(id) `id` ; id"},
                 "output": {"image": f"{sandbox.registry.host}/{namespace}/hostile",
                            "insecure": True, "labels": HOSTILE_LABELS}},
    }])
    done = sandbox.wait_settled("hostile", namespace, timeout=300)
    assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
    pod = sandbox.admin.get("v1", "Pod", done["status"]["podName"], namespace)
    assert pod is not None
    container = pod["spec"]["containers"][0]
    assert not container.get("command")  # the image's entrypoint: no shell in between
    for label, value in HOSTILE_LABELS.items():
        assert f"--label={label}={value}" in container["args"]
    registry = sandbox.registry.url
    manifest = httpx.get(f"{registry}/v2/{namespace}/hostile/manifests/latest", timeout=10,
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2"
                                  "+json, application/vnd.oci.image.manifest.v1+json"}).json()
    config = httpx.get(f"{registry}/v2/{namespace}/hostile/blobs/{manifest['config']['digest']}",
                       timeout=10).json()
    labels = config["config"]["Labels"]
    assert {key: labels.get(key) for key in HOSTILE_LABELS} == HOSTILE_LABELS
