"""``make demo``: one multi-stage Dockerfile, built at two targets, on the local sandbox.

It starts the sandbox (apiserver, registry, a real node running real Kaniko, operator), applies
a ConfigMap context and two ImageBuilds (the fat ``build`` stage, and the slim ``runtime``
stage after its ``test`` check stage), waits for both, asks for a rebuild of the runtime to
show the registry layer cache at work, prints the statuses side by side (cache hits, checks,
the largest layer and the instruction that made it), and stops everything it started.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sandbox.host_lock import HostLock, NodeBusyError
from sandbox.images import KanikoMissingError, kaniko_executor
from sandbox.stack import IMAGEBUILD_API, Sandbox
from stagewright.status import human_size

#: A toolchain-heavy build stage, a test stage, and a runtime stage that keeps only the
#: artifact: the shape of a real Java or Go service's Dockerfile, on a busybox base.
DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
# Stand-in for a JDK or Go toolchain: 24 MiB that must not reach the runtime image.
RUN mkdir -p /opt/toolchain /out \\
 && dd if=/dev/urandom of=/opt/toolchain/sdk.bin bs=1M count=24 2>/dev/null
COPY app.sh /src/app.sh
RUN cp /src/app.sh /out/app && chmod 0755 /out/app

FROM build AS test
RUN /out/app --self-test

FROM ${BASE} AS runtime
COPY --from=build /out/app /usr/local/bin/app
USER 65532
ENTRYPOINT ["/usr/local/bin/app"]
"""

APP = """\
#!/bin/sh
if [ "$1" = "--self-test" ]; then echo "self-test passed"; exit 0; fi
echo "hello from a multi-stage build"
"""


def context_configmap(namespace: str) -> dict[str, Any]:
    """The build context: small enough to live in a ConfigMap."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "demo-context", "namespace": namespace},
        "data": {"Dockerfile": DOCKERFILE, "app.sh": APP},
    }


def imagebuild(name: str, target: str, registry: str, base: str,
               namespace: str = "default", checks: list[str] | None = None) -> dict[str, Any]:
    """An ImageBuild of one target of the demo Dockerfile, pushed to the sandbox registry."""
    build: dict[str, Any] = {
        "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"configMap": {"name": "demo-context"}},
            "target": target,
            "buildArgs": {"BASE": base},
            "output": {"image": f"{registry}/demo/app-{target}", "tags": ["latest", "v1"],
                       "insecure": True,
                       "labels": {"org.opencontainers.image.title": f"demo {target}"}},
            "cache": {"enabled": True, "ttl": "24h"},
            "timeout": "10m",
        },
    }
    if checks:
        build["spec"]["checks"] = checks
    return build


def duration(status: dict[str, Any]) -> str:
    """Seconds from startTime to completionTime."""
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return "-"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return f"{(datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).seconds}s"


def largest_layer(status: dict[str, Any], width: int = 48) -> str:
    """The largest layer's size and the instruction that made it, cut to ``width``."""
    layers = status.get("largestLayers") or []
    if not layers:
        return "-"
    top = layers[0]
    text = f"{human_size(top['size'])} {top.get('instruction') or top['digest'][:19]}"
    return text if len(text) <= width else text[: width - 1] + "…"


def checks(status: dict[str, Any]) -> str:
    """``test:Passed`` per check stage, or ``-``."""
    return ",".join(f"{c['stage']}:{c['result']}" for c in status.get("checks") or []) or "-"


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The statuses side by side, like ``kubectl get ib`` with a few more columns."""
    header = ("IMAGEBUILD", "TARGET", "PHASE", "SIZE", "LAYERS", "CACHE", "CHECKS",
              "LARGEST LAYER", "DIGEST", "DURATION")
    lines = [header]
    for label, obj in rows:
        status = obj.get("status") or {}
        lines.append((label, obj["spec"].get("target", "-"), status.get("phase", "-"),
                      status.get("sizeHuman", "-"), str(status.get("layers", "-")),
                      (status.get("cache") or {}).get("summary", "-"), checks(status),
                      largest_layer(status), (status.get("digest") or "-")[:19],
                      duration(status)))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in lines)


def run(work_dir: Path) -> int:
    """The demo itself; returns the exit code (0 when both targets built)."""
    started = time.monotonic()
    print("Starting the sandbox: kube-apiserver + etcd, registry, images, a node "
          "(containerd, kubelet, scheduler, controller-manager), operator...")
    lock = HostLock("make demo", notify=lambda message: print(f"  {message}", flush=True))
    with Sandbox(work_dir, lock=lock) as sandbox:
        waited = sandbox.timings.get("waiting for another sandbox's node", 0.0)
        if waited >= 1:
            print(f"  waited {waited:.1f}s for another sandbox's node to stop (one per machine)")
        print(f"  ready in {time.monotonic() - started - waited:.1f}s "
              f"(registry {sandbox.registry.host}, Kaniko image {sandbox.images.kaniko})")
        admin, registry = sandbox.admin, sandbox.registry.host
        admin.apply([context_configmap("default")])
        builds = [imagebuild("demo-build", "build", registry, sandbox.base_image),
                  imagebuild("demo-runtime", "runtime", registry, sandbox.base_image,
                             checks=["test"])]
        print("Applying ImageBuilds demo-build (target build) and demo-runtime (target runtime, "
              "after its check stage test)")
        admin.apply(builds)
        results = [(b["metadata"]["name"], sandbox.wait_settled(b["metadata"]["name"]))
                   for b in builds]
        print("Rebuilding demo-runtime (annotation stagewright.dev/rebuild) with a warm cache")
        results.append(("demo-runtime (rebuild)", sandbox.rebuild("demo-runtime", request="demo")))
        print()
        print(table(results))
        print()
        for label, obj in results:
            status = obj.get("status") or {}
            if status.get("phase") != "Succeeded":
                print(f"{label}: {status.get('reason')}: {status.get('message')}")
        ok = all((o.get("status") or {}).get("phase") == "Succeeded" for _, o in results)
        fat, slim = (results[0][1]["status"].get("size"), results[1][1]["status"].get("size"))
        if ok and fat and slim:
            print(f"The runtime stage is {fat / slim:.0f}x smaller than the build stage "
                  f"({slim:,} vs {fat:,} bytes, compressed, as the registry serves them).")
        print("Stopping the sandbox.")
    print(f"Done in {time.monotonic() - started:.1f}s.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sandbox.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep logs and state in this directory")
    args = parser.parse_args(argv)
    try:
        kaniko_executor()
    except KanikoMissingError as exc:
        print(f"make demo needs the real Kaniko executor: {exc}", file=sys.stderr)
        return 2
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            return run(args.keep)
        with tempfile.TemporaryDirectory(prefix="stagewright-demo-") as work_dir:
            return run(Path(work_dir))
    except NodeBusyError as exc:  # a kept sandbox (make sandbox) holds the node
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
