#!/usr/bin/env bash
# Build the Kubernetes binaries the sandbox runs from Debian's `kubernetes` source package, cached.
#
# Why: Debian ships no apiserver, kubelet, scheduler or controller-manager binary and no image
# can be pulled here, yet the sandbox runs a real single-node cluster (CRD validation, status
# subresource, RBAC, the real scheduler, kubelet and garbage collector). The source package
# carries the whole tree with vendor/, and builds offline with Debian's Go. The binaries are
# cached by version, so only the first run pays the build (~8 minutes on 2 cores).
#
# Prints the directory holding the binaries on stdout; all progress goes to stderr.
set -euo pipefail

VERSION="v1.20.2"
BINARIES=(kube-apiserver kubelet kube-scheduler kube-controller-manager)
CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
OUT="$CACHE_DIR/kubernetes-$VERSION"

complete=1
for binary in "${BINARIES[@]}"; do
  [[ -x "$OUT/$binary" ]] || complete=0
done
if ((complete)); then
  echo "$OUT"
  exit 0
fi

log() { echo "build-kubernetes: $*" >&2; }

# shellcheck source=hack/lib/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-mirror.sh"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log "installing the Go toolchain and the reflect2 fix (apt)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go rsync golang-github-modern-go-reflect2-dev >&2

log "downloading Debian's kubernetes source package"
mkdir -p "$WORK/lists/partial"
echo "deb-src $(debian_mirror) bookworm main" > "$WORK/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$WORK/lists")
apt-get "${APT_OPTS[@]}" update -qq >&2
(cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2)

log "unpacking"
origs=("$WORK"/kubernetes_*.orig.tar.*)
mkdir -p "$WORK/src"
tar -xf "${origs[0]}" -C "$WORK/src" --strip-components=1

# The vendored reflect2 1.0.1 segfaults under Go >= 1.18 on the first custom-resource write.
log "replacing vendored modern-go/reflect2 with Debian's 1.0.2"
rsync -a --delete /usr/share/gocode/src/github.com/modern-go/reflect2/ \
  "$WORK/src/vendor/github.com/modern-go/reflect2/"

log "compiling ${BINARIES[*]} (about 8 minutes on 2 cores)"
cd "$WORK/src"
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
what=""
for binary in "${BINARIES[@]}"; do what+="cmd/$binary "; done
GOPATH="$PWD/.go" GOCACHE="$WORK/gocache" CGO_ENABLED=0 KUBE_GIT_VERSION="$VERSION" \
  KUBE_GIT_TREE_STATE=clean GOPROXY=off \
  make WHAT="${what% }" >&2

mkdir -p "$OUT.tmp"
for binary in "${BINARIES[@]}"; do
  install -m 0755 "_output/local/bin/linux/amd64/$binary" "$OUT.tmp/$binary"
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "cached $OUT"
echo "$OUT"
