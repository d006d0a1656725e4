"""The sandbox's Buildah image, made from Debian's ``buildah`` package (nothing is pulled).

Build pods of ``builder: buildah`` run upstream's image in production; the sandbox cannot pull
it, so it lays out the host's own buildah the way that image works: the binary with the shared
libraries ``ldd`` names, Debian's containers config (policy.json, registries.conf,
containers.conf, seccomp.json), a CA bundle, busybox for the pod's ``sh`` script, and
``BUILDAH_ISOLATION=chroot`` as upstream's image sets it. No runc: with chroot isolation buildah
runs RUN steps itself and never calls an OCI runtime. About 26 MB (12 MB compressed); no git,
so no git contexts in the sandbox.

``sandbox.images`` builds it once per content key into an OCI archive under
``~/.cache/stagewright``: the key hashes every file that goes in, so a Debian upgrade of
buildah or a library makes a new one, and later runs only upload the archive (``skopeo copy``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

BUILDAH = Path("/usr/bin/buildah")
BUSYBOX = Path("/bin/busybox")
#: Debian's containers configuration, which buildah reads at start (policy.json is required).
CONFIG_FILES = (
    Path("/etc/containers/policy.json"),
    Path("/etc/containers/registries.conf"),
    Path("/usr/share/containers/containers.conf"),
    Path("/usr/share/containers/seccomp.json"),
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: What the pod's script and a person debugging the pod need; nothing else.
APPLETS = ("sh", "cat", "printf", "mkdir", "dirname", "echo", "ls", "env", "rm", "test", "[")
#: Bumped when the layout below changes, so the cache key changes with it.
RECIPE_VERSION = "1"
#: The project's cache, as the hack/*.sh scripts find it.
CACHE_DIR = Path(os.environ.get("STAGEWRIGHT_CACHE") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stagewright")
_LDD_PATH = re.compile(r"(/\S+\.so[.\d]*)\s")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects ``binary`` loads, the dynamic loader included (from ``ldd``)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    return sorted({Path(match) for match in _LDD_PATH.findall(out.stdout + " ")})


def _inputs() -> list[Path]:
    """Every host file copied into the image, in a stable order."""
    missing = [p for p in (BUILDAH, BUSYBOX, *CONFIG_FILES) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(map(str, missing))} missing: apt-get install -y "
                                "buildah busybox-static")
    return [BUILDAH, BUSYBOX, *shared_libraries(BUILDAH), *CONFIG_FILES,
            *([CA_BUNDLE] if CA_BUNDLE.exists() else [])]


def content_key() -> str:
    """A short hash of the recipe and every input file's path and bytes."""
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for path in _inputs():
        digest.update(str(path).encode() + b"\0" + path.resolve().read_bytes())
    return digest.hexdigest()[:16]


def buildah_rootfs(rootfs: Path) -> Path:
    """Lay out the image's files under ``rootfs`` (which must not exist)."""
    for directory in ("bin", "etc/containers/registries.conf.d", "root", "tmp", "var/tmp",
                      "var/lib/containers", "run", "workspace"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    for sticky in ("tmp", "var/tmp"):
        (rootfs / sticky).chmod(0o1777)
    for path in _inputs():
        target = rootfs / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), target)  # the file, not Debian's /lib -> usr/lib links
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (rootfs / "etc" / "nsswitch.conf").write_text("hosts: files dns\npasswd: files\n")
    return rootfs


#: The image config: upstream's image sets chroot isolation the same way.
IMAGE_CONFIG = ["--env", "PATH=/usr/bin:/bin", "--env", "BUILDAH_ISOLATION=chroot",
                "--env", "HOME=/root", "--workingdir", "/", "--cmd", "/bin/sh"]


def cached_archive(cache_dir: Path = CACHE_DIR) -> Path:
    """Where the image's OCI archive is kept for the current content (it may not exist yet)."""
    return cache_dir / f"buildah-image-{content_key()}.oci.tar"


def push_archive(archive: Path, reference: str, env: dict[str, str]) -> str:
    """Upload a cached OCI archive to a plain-HTTP registry as it is (no rebuild, no recompress)."""
    done = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                           f"oci-archive:{archive}", f"docker://{reference}"],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy {archive} failed ({done.returncode}): {done.stderr}")
    return reference
