"""Build and push the sandbox's base image: busybox-static in an otherwise empty image.

No image can be pulled on this machine, so test Dockerfiles start ``FROM`` this image in the
local registry instead of ``busybox`` from Docker Hub. It has a shell and the usual tools, so
RUN steps behave as in a real build. About 2 MB; builds and pushes in about half a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sandbox.buildah import buildah_env, remove_storage

#: Where busybox-static puts its binary (Debian package ``busybox-static``).
BUSYBOX = Path("/bin/busybox")
#: Repository path of the base image inside the local registry.
BASE_REPOSITORY = "stagewright-sandbox/busybox"
#: The applets linked into /bin: enough for shell-script RUN steps.
APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "printf", "mkdir", "cp", "mv", "rm", "ln", "dd", "head",
    "tail", "sed", "grep", "wc", "sleep", "test", "[", "true", "false", "env", "chmod",
    "chown", "tar", "gzip", "gunzip", "touch", "find", "sort", "uniq", "tr", "cut", "date",
    "id", "whoami", "hostname", "uname", "du", "df", "pwd", "basename", "dirname", "sha256sum",
    "md5sum", "xargs", "awk", "expr", "seq", "yes", "stat", "readlink", "realpath", "which",
    "vi", "less", "more", "tee", "diff", "cmp",
)


def build_base_image(
    registry: str, *, work_dir: Path | None = None, tls_verify: bool = False,
    authfile: Path | None = None,
) -> str:
    """Build the busybox base image and push it to ``registry`` (``host:port``).

    Returns the pushed reference, ``<registry>/stagewright-sandbox/busybox:latest``. Uses a
    private buildah store that is removed afterwards, like every sandbox build.
    """
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install -y busybox-static")
    reference = f"{registry}/{BASE_REPOSITORY}:latest"
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-base-", dir=work_dir))
    try:
        rootfs = _make_rootfs(scratch / "rootfs")
        env = buildah_env(scratch, insecure_registries=() if tls_verify else (registry,))
        # vfs: these steps run in this mount namespace, and vfs mounts nothing.
        buildah = ["buildah", "--root", str(scratch / "root"), "--runroot",
                   str(scratch / "runroot"), "--storage-driver", "vfs"]
        container = _run([*buildah, "from", "--name", "base", "scratch"], env).strip()
        _run([*buildah, "copy", container, f"{rootfs}/", "/"], env)
        _run([*buildah, "config", "--cmd", "/bin/sh", "--env", "PATH=/bin:/usr/bin",
              "--os", "linux", "--arch", "amd64", "--workingdir", "/", container], env)
        _run([*buildah, "commit", "--quiet", "--format", "docker", container,
              "localhost/sandbox-base"], env)
        push = [*buildah, "push", "--format", "docker", f"--tls-verify={str(tls_verify).lower()}"]
        if authfile is not None:
            push += ["--authfile", str(authfile)]
        _run([*push, "localhost/sandbox-base", f"docker://{reference}"], env)
    finally:
        remove_storage(scratch)
    return reference


def _make_rootfs(rootfs: Path) -> Path:
    """A root filesystem of /bin/busybox plus one symlink per applet, and the usual dirs."""
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("tmp", "etc", "root", "usr/bin", "var", "workspace"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", bin_dir / applet)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({done.returncode}): {done.stderr}")
    return done.stdout
