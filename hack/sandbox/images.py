"""The sandbox's own images, made with buildah and pushed to its registry (nothing is pulled).

- ``busybox``: busybox-static in an otherwise empty image, the base of every test Dockerfile
  (~1 MB compressed). No base image can be pulled on these machines.
- ``pause``: the same rootfs with a sleep-forever entrypoint, containerd's ``sandbox_image``.
- ``kaniko``: the real Kaniko executor from ``../shared/kaniko/`` (or the file
  ``STAGEWRIGHT_KANIKO_EXECUTOR`` names) laid out as upstream's ``deploy/Dockerfile`` does,
  so build pods run Kaniko exactly as in production. Its checksum is verified; where the file
  is absent, :class:`KanikoMissingError` says so and callers skip or stop, never fall back.
- ``buildah``: Debian's buildah laid out as upstream's image works (``sandbox.buildah_image``),
  for ImageBuilds with ``builder: buildah``; cached by content, so usually only uploaded.
- a two-platform base (``build_platform_base``, made on demand by the multi-platform tests):
  the same busybox rootfs for linux/amd64 and, with Debian's arm64 busybox-static
  (``hack/fetch-busybox-arm64.sh``, cached), for linux/arm64, each pushed alone and both as
  one OCI image index.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.buildah import buildah_env, remove_storage
from sandbox.buildah_image import IMAGE_CONFIG as BUILDAH_IMAGE_CONFIG
from sandbox.buildah_image import buildah_rootfs, cached_archive, push_archive
from sandbox.controlplane import REPO_ROOT

#: Where busybox-static puts its binary (Debian package ``busybox-static``).
BUSYBOX = Path("/bin/busybox")
#: The applets linked into /bin: enough for shell-script RUN steps.
APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "printf", "mkdir", "cp", "mv", "rm", "ln", "dd", "head",
    "tail", "sed", "grep", "wc", "sleep", "test", "[", "true", "false", "env", "chmod",
    "chown", "tar", "gzip", "gunzip", "touch", "find", "sort", "uniq", "tr", "cut", "date",
    "id", "whoami", "hostname", "uname", "du", "df", "pwd", "basename", "dirname", "sha256sum",
    "md5sum", "xargs", "awk", "expr", "seq", "yes", "stat", "readlink", "realpath", "which",
    "vi", "less", "more", "tee", "diff", "cmp", "kill",
)
KANIKO_VERSION = "v1.28.3"
#: The executor the operator pins, kept next to the repository with its provenance (README).
DEFAULT_KANIKO_EXECUTOR = (REPO_ROOT.parent / "shared" / "kaniko"
                           / f"executor-{KANIKO_VERSION}-linux-amd64.gz")
KANIKO_EXECUTOR_ENV = "STAGEWRIGHT_KANIKO_EXECUTOR"
KANIKO_SHA256 = "a1dd844d1d20e5e5b626499f685470660eca81e9586f60a1b483dbe40735a643"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: The pause container's whole job: hold the pod's namespaces, exit cleanly on TERM.
PAUSE_SCRIPT = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'


#: The busybox base image's place in the sandbox registry (samples name it: make sandbox).
BASE_REPOSITORY = "stagewright-sandbox/busybox:latest"
#: Where the two-platform base goes: ``:amd64``, ``:arm64`` and the index, ``:multi``.
PLATFORM_BASE_REPOSITORY = "stagewright-sandbox/busybox-platforms"
FETCH_ARM64_BUSYBOX = REPO_ROOT / "hack" / "fetch-busybox-arm64.sh"


class KanikoMissingError(RuntimeError):
    """The Kaniko executor is not where the sandbox looks for it (a clone outside the project)."""


@dataclass(frozen=True)
class SandboxImages:
    """References of the pushed images, as pods (and containerd) name them."""

    base: str
    pause: str
    kaniko: str
    buildah: str


@dataclass(frozen=True)
class PlatformBase:
    """The two-platform base image: the index, and each platform's image alone."""

    index: str
    amd64: str
    arm64: str


def kaniko_executor() -> Path:
    """The gzipped Kaniko executor, or :class:`KanikoMissingError` saying where it was sought."""
    path = Path(os.environ.get(KANIKO_EXECUTOR_ENV, DEFAULT_KANIKO_EXECUTOR))
    if not path.is_file():
        raise KanikoMissingError(
            f"the Kaniko executor {path} is missing (set {KANIKO_EXECUTOR_ENV} to "
            f"executor-{KANIKO_VERSION}-linux-amd64.gz; see ../shared/kaniko/README.md)")
    return path


def build_images(registry: str, *, work_dir: Path) -> SandboxImages:
    """Build the images in one private buildah store and push them to ``registry``."""
    executor = kaniko_executor()
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-images-", dir=work_dir))
    try:
        builder = _Buildah(scratch, registry)
        rootfs = _busybox_rootfs(scratch / "busybox")
        base = builder.image(rootfs, f"{registry}/{BASE_REPOSITORY}",
                             ["--cmd", "/bin/sh", "--env", "PATH=/bin:/usr/bin",
                              "--workingdir", "/"])
        pause = builder.image(rootfs, f"{registry}/stagewright-sandbox/pause:latest",
                              ["--entrypoint", f'["/bin/sh", "-c", {json.dumps(PAUSE_SCRIPT)}]',
                               "--cmd", "", "--env", "PATH=/bin"])
        kaniko_rootfs = _kaniko_rootfs(scratch / "kaniko", executor)
        kaniko = builder.image(kaniko_rootfs, f"{registry}/stagewright-sandbox/kaniko:"
                               f"{KANIKO_VERSION}", [
            "--env", "HOME=/root", "--env", "USER=root",
            "--env", "PATH=/usr/local/bin:/kaniko", "--env", "SSL_CERT_DIR=/kaniko/ssl/certs",
            "--env", "DOCKER_CONFIG=/kaniko/.docker/", "--workingdir", "/workspace",
            "--entrypoint", '["/kaniko/executor"]', "--cmd", ""])
        buildah = _buildah_image(builder, f"{registry}/stagewright-sandbox/buildah:sandbox",
                                 scratch)
    finally:
        remove_storage(scratch)
    return SandboxImages(base=base, pause=pause, kaniko=kaniko, buildah=buildah)


def build_platform_base(registry: str, *, work_dir: Path) -> PlatformBase:
    """The busybox base for linux/amd64 and linux/arm64, pushed alone and as one index.

    The arm64 busybox comes from ``hack/fetch-busybox-arm64.sh`` (Debian's, through the
    machine's own mirror, cached); nothing here runs it.
    """
    fetched = subprocess.run([str(FETCH_ARM64_BUSYBOX)], capture_output=True, text=True,
                             check=False)
    if fetched.returncode != 0:
        raise RuntimeError(f"{FETCH_ARM64_BUSYBOX.name} failed: {fetched.stderr}")
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-platform-base-", dir=work_dir))
    repository = f"{registry}/{PLATFORM_BASE_REPOSITORY}"
    config = ["--cmd", "/bin/sh", "--env", "PATH=/bin:/usr/bin", "--workingdir", "/"]
    try:
        builder = _Buildah(scratch, registry)
        locals_ = []
        for arch, busybox in (("amd64", BUSYBOX), ("arm64", Path(fetched.stdout.strip()))):
            rootfs = _busybox_rootfs(scratch / f"busybox-{arch}", busybox)
            builder.image(rootfs, f"{repository}:{arch}", config, arch=arch, format_="oci")
            locals_.append(f"localhost/busybox-platforms:{arch}")
        builder.index(f"{repository}:multi", locals_)
    finally:
        remove_storage(scratch)
    return PlatformBase(index=f"{repository}:multi", amd64=f"{repository}:amd64",
                        arm64=f"{repository}:arm64")


def _buildah_image(builder: _Buildah, reference: str, scratch: Path) -> str:
    """Debian's buildah as an image: built into the cache once per content, then uploaded."""
    archive = cached_archive()
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        builder.image(buildah_rootfs(scratch / "buildah"), reference, BUILDAH_IMAGE_CONFIG,
                      destination=f"oci-archive:{partial}")
        partial.rename(archive)  # complete or absent, never half-written
    return push_archive(archive, reference, builder.env)


class _Buildah:
    """``buildah from scratch`` + copy + config + commit + push, in one private store."""

    def __init__(self, scratch: Path, registry: str) -> None:
        self.env = buildah_env(scratch, insecure_registries=(registry,))
        # vfs: these steps run in this mount namespace, and vfs mounts nothing.
        self.argv = ["buildah", "--root", str(scratch / "root"), "--runroot",
                     str(scratch / "runroot"), "--storage-driver", "vfs"]

    def image(self, rootfs: Path, reference: str, config: list[str],
              destination: str | None = None, *, arch: str = "amd64",
              format_: str = "docker") -> str:
        """Make the image; push it to ``reference``, or to ``destination`` (any transport)."""
        container = self._run("from", "scratch").strip()
        self._run("copy", container, f"{rootfs}/", "/")
        self._run("config", "--os", "linux", "--arch", arch, *config, container)
        local = f"localhost/{reference.rsplit('/', 1)[-1]}"
        self._run("commit", "--quiet", "--rm", "--format", format_, container, local)
        self._run("push", "--format", format_, "--tls-verify=false", local,
                  destination or f"docker://{reference}")
        return reference

    def index(self, reference: str, images: list[str]) -> str:
        """Push ``images`` (local names) as one OCI image index under ``reference``."""
        name = "localhost/index-" + reference.rsplit("/", 1)[-1].replace(":", "-")
        self._run("manifest", "create", name)
        for image in images:
            self._run("manifest", "add", name, f"containers-storage:{image}")
        self._run("manifest", "push", "--all", "--format", "oci", "--tls-verify=false", name,
                  f"docker://{reference}")
        return reference

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args[:3])} ... failed ({done.returncode}): "
                               f"{done.stderr}")
        return done.stdout


def _busybox_rootfs(rootfs: Path, busybox: Path = BUSYBOX) -> Path:
    """/bin/busybox (``busybox``: this machine's, or another architecture's) plus one symlink
    per applet, and the usual dirs."""
    if not busybox.exists():
        raise FileNotFoundError(f"{busybox} is missing: apt-get install -y busybox-static")
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("tmp", "etc", "root", "usr/bin", "var", "workspace"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, bin_dir / "busybox")
    for applet in sorted(set(APPLETS)):
        os.symlink("busybox", bin_dir / applet)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


def _kaniko_rootfs(rootfs: Path, executor_gz: Path) -> Path:
    """Upstream's layout: /kaniko/executor, /kaniko/.docker, CA bundle, nsswitch.conf."""
    kaniko = rootfs / "kaniko"
    (kaniko / ".docker").mkdir(parents=True)
    (kaniko / "ssl" / "certs").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "workspace").mkdir()
    executor = kaniko / "executor"
    with gzip.open(executor_gz, "rb") as source, executor.open("wb") as target:
        shutil.copyfileobj(source, target)
    digest = hashlib.sha256(executor.read_bytes()).hexdigest()
    if digest != KANIKO_SHA256:
        raise KanikoMissingError(f"{executor_gz}: sha256 {digest}, expected {KANIKO_SHA256} "
                                 "(a broken checkout; see ../shared/kaniko/README.md)")
    executor.chmod(0o755)
    kaniko.chmod(0o777)
    shutil.copyfile(HOST_CA_BUNDLE, kaniko / "ssl" / "certs" / "ca-certificates.crt")
    (rootfs / "etc" / "nsswitch.conf").write_text("hosts: files dns\n")
    return rootfs
