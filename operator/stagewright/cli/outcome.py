"""Exit codes and the last line: the CLI's contract with CI scripts.

A CI step needs two things from a build command: a non-zero exit code when the image was not
built, and the reason on the last line of output (what CI systems show as the step's error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXIT_SUCCEEDED = 0
#: The build ran and failed (or its ImageBuild was deleted while followed).
EXIT_FAILED = 1
#: The command line or the file was wrong; nothing was changed in the cluster.
EXIT_USAGE = 2
#: ``--timeout`` passed before the build ended; the build itself goes on.
EXIT_TIMEOUT = 3
#: The cluster could not be reached or refused a request (kubeconfig, RBAC, network).
EXIT_CLUSTER = 4


@dataclass(frozen=True)
class Outcome:
    """How a followed build ended, for the exit code and the last line."""

    code: int
    line: str


def build_outcome(build: Mapping[str, Any]) -> Outcome:
    """The outcome of a settled build: Succeeded is 0, anything else 1, with its reason."""
    status = dict(build.get("status") or {})
    name = build["metadata"]["name"]
    if status.get("phase") == "Succeeded":
        image = status.get("image") or status.get("digest")
        return Outcome(EXIT_SUCCEEDED, f"ImageBuild {name} Succeeded: {image}")
    reason = status.get("reason") or "Unknown"
    message = (str(status.get("message") or "").strip().splitlines() or ["no message"])[0]
    return Outcome(EXIT_FAILED, f"ImageBuild {name} {status.get('phase') or 'Failed'}: "
                                f"{reason}: {message}")


def timeout_outcome(name: str, timeout: str, build: Mapping[str, Any] | None) -> Outcome:
    """The outcome when ``--timeout`` ran out; the last phase seen says where it stood."""
    status = dict((build or {}).get("status") or {})
    seen = status.get("phase") or "no status yet"
    return Outcome(EXIT_TIMEOUT, f"ImageBuild {name} Timeout: not finished after {timeout} "
                                 f"(phase {seen}); the build goes on in the cluster")


def deleted_outcome(name: str) -> Outcome:
    """The outcome when the followed ImageBuild disappeared."""
    return Outcome(EXIT_FAILED, f"ImageBuild {name} Deleted: it was deleted while followed")
