#!/usr/bin/env bash
# Install everything the tests and the demo need on a fresh Debian 12 machine.
#
# apt: the registry, buildah and friends, etcd, containerd and CNI for the sandbox node, and
# the Go toolchain for the Kubernetes build.
# pip: the project with its test and lint extras, into .venv.
# Then the cached builds: the Kubernetes binaries (~6 min the first time) and helm/kubectl;
# with --operator-image (the test targets) also the operator's own image, built beside the
# Kubernetes compile: that compile is CPU-bound, the image build mostly downloads (debootstrap,
# PyPI), so on a first run the two together take hardly longer than the compile alone.
# Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

OPERATOR_IMAGE=false
case "${1:-}" in
  --operator-image) OPERATOR_IMAGE=true ;;
  "") ;;
  *) echo "usage: $0 [--operator-image]" >&2; exit 2 ;;
esac

log() { echo "install-deps: $*" >&2; }

APT_PACKAGES=(
  docker-registry        # the real OCI registry the tests push to
  buildah skopeo busybox-static  # the sandbox's own images (base, pause, Kaniko)
  containerd runc conntrack containernetworking-plugins iptables iproute2  # the sandbox node
  etcd-server            # kube-apiserver's storage
  apache2-utils openssl  # htpasswd and certificates for registry/apiserver TLS
  golang-go rsync golang-github-modern-go-reflect2-dev  # building kube-apiserver
  debootstrap curl       # the operator image test's Debian base (hack/build-operator-image.sh)
  git ca-certificates shellcheck
  python3-venv           # .venv (Debian splits the venv module out of python3)
)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import stagewright, kopf, kubernetes_validate, mypy" 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.installed ]]; then
  log "pip install -e .[test,lint]"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test,lint]"
  touch .venv/.installed
fi

IMAGE_PID=""
IMAGE_LOG=""
if [[ $OPERATOR_IMAGE == true && $(id -u) -eq 0 ]]; then  # the image build needs root
  IMAGE_LOG=$(mktemp)
  hack/build-operator-image.sh >"$IMAGE_LOG" 2>&1 &
  IMAGE_PID=$!
  # Stopped by PID if anything below fails (or on Ctrl-C); its own trap cleans its work dir.
  trap '[[ -z "$IMAGE_PID" ]] || kill "$IMAGE_PID" 2>/dev/null || true; rm -f "$IMAGE_LOG"' EXIT
fi

log "kubernetes binaries: $(hack/build-kubernetes.sh)"
log "helm and kubectl: $(hack/install-tools.sh)"
# cosign verifies what the operator signs, in the cluster tier (and in docs/signing.md).
if [[ $OPERATOR_IMAGE == true ]]; then
  log "cosign: $(hack/install-cosign.sh)"
fi

if [[ -n "$IMAGE_PID" ]]; then
  if ! wait "$IMAGE_PID"; then
    IMAGE_PID=""
    cat "$IMAGE_LOG" >&2
    log "building the operator image failed (log above)"
    exit 1
  fi
  IMAGE_PID=""
  log "operator image: $(grep '^image-archive=' "$IMAGE_LOG" | cut -d= -f2-)"
fi
