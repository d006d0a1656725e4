"""buildah in a private store: how the sandbox makes its own images (no Docker, no pulls).

The sandbox builds its base, pause and Kaniko images with buildah (``sandbox.images``). Each
build gets a private store, registries.conf and HOME, so nothing of the host's container
configuration or credentials is read or changed, and the store is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path


def buildah_env(
    scratch: Path, *, insecure_registries: Iterable[str] = (), authfile: Path | None = None
) -> dict[str, str]:
    """A clean environment confined to ``scratch``: no host credentials, private registries.conf.

    HOME and the XDG dirs point into ``scratch`` so buildah finds no auth file but ours.
    """
    for name in ("home", "run", "config", "tmp"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    (scratch / "run").chmod(0o700)
    conf = scratch / "registries.conf"
    conf.write_text(registries_conf(insecure_registries))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(scratch / "home"),
        "XDG_RUNTIME_DIR": str(scratch / "run"),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        "TMPDIR": str(scratch / "tmp"),
        "LANG": "C.UTF-8",
        "CONTAINERS_REGISTRIES_CONF": str(conf),
    }
    if authfile is not None:
        env["REGISTRY_AUTH_FILE"] = str(authfile)
    return env


def registries_conf(insecure_registries: Iterable[str]) -> str:
    """registries.conf marking each host insecure (plain HTTP or unverified TLS)."""
    lines = ['unqualified-search-registries = ["docker.io"]', ""]
    for host in sorted(set(insecure_registries)):
        lines += ["[[registry]]", f"location = {json.dumps(host)}", "insecure = true", ""]
    return "\n".join(lines)


def remove_storage(path: Path) -> None:
    """Remove a private store: unmount anything left under it, then delete the tree."""
    if not path.exists():
        return
    for mount_point in sorted(mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mounts), shallowest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mount_point = line.split()[1].encode().decode("unicode_escape")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return sorted(found)
