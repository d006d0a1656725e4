#!/usr/bin/env bash
# Build operator/Dockerfile with buildah, on a machine with no Docker engine and no image pulls,
# keep the image, and optionally push it to a registry.
#
# Why: the operator image must be buildable and runnable before anyone ships it, and the
# project's machines can neither pull python:*-slim nor run Docker. So this script makes the
# base locally and builds the real Dockerfile on it:
#   1. a Debian bookworm rootfs (debootstrap --variant=minbase + python3, python3-venv), cached;
#   2. imported with `buildah from scratch` and pushed to a throwaway local registry
#      (Debian's docker-registry on 127.0.0.1);
#   3. `buildah bud --build-arg BASE_IMAGE=<that registry>/...` of operator/Dockerfile;
#   4. `stagewright --help` (and a few run-time checks) inside the built image, as uid 65532;
#   5. the image kept as an OCI archive in the cache, named by a content key (a hash of the
#      Dockerfile, .dockerignore, pyproject.toml, operator/stagewright/ and this script), so
#      a later run with the same sources skips steps 1-4 (seconds instead of minutes).
# The build stage installs the operator's dependencies from PyPI, like any docker build (the
# key covers pyproject.toml, not what PyPI serves that day; --rebuild builds afresh).
#
# Usage: build-operator-image.sh [--push REGISTRY/REPOSITORY:TAG] [--rebuild]
#   --push   copy the image to a plain-HTTP registry (the sandbox's) with skopeo, and print
#            `image-reference=REPOSITORY@sha256:...` as that registry stores it.
# Prints `image-archive=<path>`, `image-size-uncompressed=<bytes>` and
# `image-size-compressed=<bytes>` (what a registry stores: config + layers) on stdout;
# progress goes to stderr. Needs root (debootstrap, buildah's vfs storage). Cleans up after
# itself; the rootfs tarball and the image archives stay in $STAGEWRIGHT_CACHE
# (default ~/.cache/stagewright), the three newest archives only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv
BASE_TARBALL="$CACHE_DIR/operator-image/debian-$SUITE-minbase-python3.tar"
TAG=localhost/stagewright:dev
ARCHIVE_DIR="$CACHE_DIR/operator-image"

log() { echo "build-operator-image: $*" >&2; }
die() { log "$*"; exit 1; }

PUSH=""
REBUILD=false
while (($#)); do
  case "$1" in
    --push) [[ $# -ge 2 ]] || die "--push needs REGISTRY/REPOSITORY:TAG"; PUSH=$2; shift 2 ;;
    --rebuild) REBUILD=true; shift ;;
    *) die "unknown argument $1 (usage: $0 [--push REGISTRY/REPOSITORY:TAG] [--rebuild])" ;;
  esac
done

# The content key: every input of the image, by path and bytes, in a stable order.
content_key() {
  {
    printf '%s\n' "$SUITE" "$BASE_PACKAGES"
    (cd "$ROOT" && find operator/Dockerfile .dockerignore pyproject.toml operator/stagewright \
      hack/build-operator-image.sh -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}
KEY=$(content_key)
ARCHIVE="$ARCHIVE_DIR/stagewright-$KEY.oci.tar"
# One build at a time per cache: a second caller (the test session while `make deps-test`
# still builds, another worktree) waits here and then finds the archive cached.
mkdir -p "$ARCHIVE_DIR"
exec {LOCK_FD}>"$ARCHIVE_DIR/.build.lock"
flock "$LOCK_FD"
SIZES="$ARCHIVE_DIR/stagewright-$KEY.sizes"

# Upload the kept archive as it is (no rebuild, no recompression) and name it by digest.
push_archive() {
  local digest
  log "pushing $ARCHIVE to $PUSH"
  skopeo copy --quiet --dest-tls-verify=false "oci-archive:$ARCHIVE" "docker://$PUSH" >&2
  digest=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$PUSH")
  echo "image-reference=${PUSH%:*}@$digest"
}

report() {
  echo "image-archive=$ARCHIVE"
  cat "$SIZES"
  if [[ -n "$PUSH" ]]; then push_archive; fi
}

if [[ $REBUILD == false && -f "$ARCHIVE" && -f "$SIZES" ]]; then
  log "cached: $ARCHIVE (content key $KEY)"
  report
  exit 0
fi

for tool in buildah skopeo debootstrap docker-registry curl python3; do
  command -v "$tool" >/dev/null \
    || die "$tool is missing: apt-get install -y buildah skopeo runc debootstrap docker-registry curl"
done
[[ $(id -u) == 0 ]] || die "needs root (debootstrap and buildah's storage)"

# shellcheck source=hack/lib/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-mirror.sh"

WORK=$(mktemp -d)
REGISTRY_PID=""
cleanup() {
  if [[ -n "$REGISTRY_PID" ]]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
  # buildah's vfs storage holds root-owned layer copies; unmount before removing.
  buildah "${STORE[@]}" umount --all >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
trap cleanup EXIT

# 1. The base rootfs, cached as a tarball (debootstrap is the slow part: about a minute).
if [[ ! -f "$BASE_TARBALL" ]]; then
  MIRROR=$(debian_mirror)
  log "debootstrap --variant=minbase $SUITE (+$BASE_PACKAGES)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$WORK/rootfs" "$MIRROR" >&2
  # Leave no trace of this machine's mirror in the image: apt lists and logs name it.
  printf 'deb http://deb.debian.org/debian %s main\n' "$SUITE" > "$WORK/rootfs/etc/apt/sources.list"
  rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/* \
    "$WORK"/rootfs/var/log/* "$WORK"/rootfs/debootstrap
  # deb.debian.org is Debian's public default and named by stock files (apt's examples);
  # any other mirror host (a local proxy, a company mirror) must not ship in the image.
  host=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname or "")' "$MIRROR")
  if [[ -n "$host" && "$host" != "deb.debian.org" ]] && grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "$host" "$WORK/rootfs" >&2; then
    die "the rootfs still names the build machine's mirror (files above)"
  fi
  mkdir -p "$(dirname "$BASE_TARBALL")"
  tar -C "$WORK/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
    --exclude='./sys/*' -cf "$BASE_TARBALL.tmp" .
  mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
  rm -rf "$WORK/rootfs"
fi

# A private containers config: only our throwaway registry, marked plain-HTTP.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REGISTRY="127.0.0.1:$PORT"
cat > "$WORK/registries.conf" <<EOF
unqualified-search-registries = []
[[registry]]
location = "$REGISTRY"
insecure = true
EOF
export CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf"

# 2. A throwaway registry (stopped by PID on exit) and the base image in it.
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: $REGISTRY, secret: throwaway}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 50); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://$REGISTRY/v2/" >/dev/null || die "the registry did not start: $(cat "$WORK/registry.log")"

BASE_IMAGE="$REGISTRY/stagewright-base/debian-python:$SUITE"
log "importing the base rootfs as $BASE_IMAGE"
ctr=$(buildah "${STORE[@]}" from --name base scratch)
mnt=$(buildah "${STORE[@]}" mount "$ctr")
tar -C "$mnt" --numeric-owner -xf "$BASE_TARBALL"
buildah "${STORE[@]}" umount "$ctr" >/dev/null
buildah "${STORE[@]}" config --os linux --arch amd64 --cmd /bin/bash \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
buildah "${STORE[@]}" commit --quiet --rm --format docker "$ctr" localhost/stagewright-base >/dev/null
buildah "${STORE[@]}" push --quiet --tls-verify=false localhost/stagewright-base "docker://$BASE_IMAGE"
buildah "${STORE[@]}" rmi localhost/stagewright-base >/dev/null

# 3. The real Dockerfile, its base pulled from the registry. chroot isolation: the default
# OCI runtime cannot run RUN steps on cgroup-v1 hybrid hosts.
# RUN steps trust the CAs this machine trusts (networks that inspect TLS to PyPI): a mount
# for the build only, never part of a layer.
TRUST=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  TRUST=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
log "buildah bud -f operator/Dockerfile --build-arg BASE_IMAGE=$BASE_IMAGE"
# No --layers: the store is thrown away, and vfs copies every intermediate layer in full.
buildah "${STORE[@]}" bud --isolation chroot --format docker "${TRUST[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$ROOT/operator/Dockerfile" -t "$TAG" "$ROOT" >&2

# 4. Run it as the Deployment will: uid 65532, entrypoint `stagewright`.
log "running stagewright --help in the image"
ctr=$(buildah "${STORE[@]}" from --name check "$TAG")
in_image() { buildah "${STORE[@]}" run --isolation chroot --user 65532:65532 "$ctr" -- "$@"; }
in_image stagewright --help >&2
# shellcheck disable=SC2016  # $HOME must expand inside the image, not here.
[[ $(in_image sh -c 'id -u; id -un; echo "$HOME"') == $'65532\nstagewright\n/tmp' ]] \
  || die "the image does not run as uid 65532 (stagewright, HOME=/tmp)"
# kopf names itself with getpass.getuser(): it must resolve without USER/LOGNAME set.
in_image env -u USER -u LOGNAME python3 -c 'import getpass; assert getpass.getuser() == "stagewright"'
# Nothing outside /tmp is writable by the operator's user (/var/tmp is Debian's sticky
# world-writable dir; readOnlyRootFilesystem closes it, and TMPDIR-less Python uses /tmp).
writable=$(in_image sh -c 'find / -xdev -writable ! -path "/tmp*" ! -path "/var/tmp" ! -path "/proc*" ! -path "/dev*" ! -path "/sys*" ! -path "/run*" ! -type l 2>/dev/null | head -5')
[[ -z "$writable" ]] || die "writable by uid 65532 outside /tmp: $writable"
in_image stagewright crd | grep -q '^kind: CustomResourceDefinition$' || die "stagewright crd failed"
config=$(buildah "${STORE[@]}" inspect --type image "$TAG" \
  | python3 -c 'import json, sys; c = json.load(sys.stdin)["OCIv1"]["config"]; print(json.dumps([c.get("Entrypoint"), c.get("Cmd"), c.get("User")]))')
[[ "$config" == '[["stagewright"], ["run"], "65532:65532"]' ]] || die "unexpected entrypoint/cmd/user: $config"

# Sizes: the unpacked root filesystem, and compressed as a registry serves it (what an
# ImageBuild's status.size would report for it: config + layers).
mnt=$(buildah "${STORE[@]}" mount "$ctr")
uncompressed=$(du -sb "$mnt" | cut -f1)
buildah "${STORE[@]}" umount "$ctr" >/dev/null
buildah "${STORE[@]}" rm "$ctr" >/dev/null
buildah "${STORE[@]}" push --quiet --tls-verify=false "$TAG" "docker://$REGISTRY/stagewright:dev"
compressed=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$REGISTRY/v2/stagewright/manifests/dev" \
  | python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["config"]["size"] + sum(l["size"] for l in m["layers"]), *(l["size"] for l in m["layers"]))')
log "compressed layer sizes (base first): ${compressed#* }"
compressed=${compressed%% *}
log "built $TAG"

# 5. Keep it: an OCI archive named by the content key (written, then renamed, so a concurrent
# run never reads half an archive), its sizes beside it; older archives beyond three go.
mkdir -p "$ARCHIVE_DIR"
buildah "${STORE[@]}" push --quiet "$TAG" "oci-archive:$ARCHIVE.tmp:stagewright:dev"
printf 'image-size-uncompressed=%s\nimage-size-compressed=%s\n' "$uncompressed" "$compressed" \
  > "$SIZES.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
mv "$SIZES.tmp" "$SIZES"
find "$ARCHIVE_DIR" -maxdepth 1 -name 'stagewright-*.oci.tar' -printf '%T@ %p\n' \
  | sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do
    rm -f "$old" "${old%.oci.tar}.sizes"
  done
report
