#!/usr/bin/env bash
# Build the Kubernetes binaries the sandbox runs from Debian's `kubernetes` source package, cached.
#
# Why: Debian ships no apiserver, kubelet, scheduler or controller-manager binary and no image
# can be pulled here, yet the sandbox runs a real single-node cluster (CRD validation, status
# subresource, RBAC, the real scheduler, kubelet and garbage collector). The source package
# carries the whole tree with vendor/, and builds offline with Debian's Go. The binaries are
# cached by version and recipe, so only the first run pays the build (~5 minutes on 2 cores).
#
# Why not upstream's `make WHAT=...`: it first regenerates every generated file in the tree
# (~2 minutes of code generators on 2 cores), though the source tarball ships all of them but
# the apiserver's OpenAPI definitions. Only those are generated here, with the same generator
# and inputs (the output is byte-identical to make's), then one `go build` compiles the four
# binaries with upstream's tags for clusters without cloud providers or dockershim
# (`providerless`, `dockerless`: the sandbox node runs containerd), which leaves the cloud SDKs
# out of the compile, and upstream's version stamps.
#
# Prints the directory holding the binaries on stdout; all progress goes to stderr.
set -euo pipefail

VERSION="v1.20.2"
BINARIES=(kube-apiserver kubelet kube-scheduler kube-controller-manager)
TAGS="providerless,dockerless"
CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
OUT="$CACHE_DIR/kubernetes-$VERSION-${TAGS//,/-}"

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

cd "$WORK/src"
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
# GOPATH mode, as 1.20's own build (its vendor/k8s.io/* are symlinks into staging/).
export GOPATH="$WORK/src/.go" GOCACHE="$WORK/gocache" GO111MODULE=off GOFLAGS="" \
  CGO_ENABLED=0 GOPROXY=off

log "generating the apiserver's OpenAPI definitions (the one generated file not shipped)"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# The inputs upstream's Makefile.generated_files gives it: every package of the tree (staging
# through its vendor/ symlinks) tagged +k8s:openapi-gen, but code-generator's and
# sample-apiserver's examples.
inputs=$({ find pkg cmd plugin -name '*.go' -type f
           find -L vendor/k8s.io -name '*.go' -type f -not -path 'vendor/k8s.io/code-generator/*' \
             -not -path 'vendor/k8s.io/sample-apiserver/*'; } \
         | xargs grep -l '^// *+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u \
         | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$WORK/openapi-gen" --logtostderr -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi -h hack/boilerplate/boilerplate.generatego.txt \
  -r "$WORK/openapi-violations.report" 2>"$WORK/openapi-gen.log" \
  || { cat "$WORK/openapi-gen.log" >&2; exit 1; }

log "compiling ${BINARIES[*]} (-tags $TAGS; about 4 minutes on 2 cores)"
# The version stamps upstream's hack/lib/version.sh sets (kubectl version, /version).
ldflags="-s -w"
for package in client-go/pkg/version component-base/version; do
  stamp="k8s.io/kubernetes/vendor/k8s.io/$package"
  ldflags+=" -X $stamp.gitVersion=$VERSION -X $stamp.gitMajor=1 -X $stamp.gitMinor=20"
  ldflags+=" -X $stamp.gitTreeState=clean"
done
packages=()
for binary in "${BINARIES[@]}"; do packages+=("./cmd/$binary"); done
mkdir -p "$WORK/bin"
go build -tags "$TAGS" -trimpath -ldflags "$ldflags" -o "$WORK/bin/" "${packages[@]}" >&2

mkdir -p "$OUT.tmp"
for binary in "${BINARIES[@]}"; do
  install -m 0755 "$WORK/bin/$binary" "$OUT.tmp/$binary"
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "cached $OUT"
echo "$OUT"
