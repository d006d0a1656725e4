#!/usr/bin/env bash
# Create a kind cluster with a local registry and install Stagewright into it.
#
# Follows kind's local-registry guide (https://kind.sigs.k8s.io/docs/user/local-registry/):
#   1. a registry container `kind-registry`, published on the host as localhost:5001;
#   2. the cluster from kind-config.yaml (containerd reads /etc/containerd/certs.d);
#   3. hosts.toml on every node, so containerd pulls both names of the registry over HTTP:
#      localhost:5001 (the host's name) and kind-registry:5000 (the name build pods push to);
#   4. the registry joins the `kind` network;
#   5. the registry documented in the kube-public/local-registry-hosting ConfigMap (KEP-1755);
# then builds the operator image with docker, loads it into the nodes, and installs the Helm
# chart with that image. Idempotent: re-running reuses the registry and the cluster and
# upgrades the release (use it after changing the operator).
#
# Needs docker and kind; helm and kubectl come from hack/install-tools.sh when not on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER="${KIND_CLUSTER_NAME:-stagewright}"
REG_NAME="${KIND_REGISTRY_NAME:-kind-registry}"
REG_PORT="${KIND_REGISTRY_PORT:-5001}"
# The distribution registry; pinned so every developer and CI run gets the same one.
REG_IMAGE="${KIND_REGISTRY_IMAGE:-registry:2.8.3}"
IMAGE_REPO="${STAGEWRIGHT_IMAGE_REPOSITORY:-ghcr.io/stagewright/stagewright}"
IMAGE_TAG="${STAGEWRIGHT_IMAGE_TAG:-kind-dev}"
NAMESPACE="${STAGEWRIGHT_NAMESPACE:-stagewright-system}"

log() { echo "kind-up: $*" >&2; }
die() { log "$*"; exit 1; }

command -v docker >/dev/null || die "docker is missing: install Docker (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable"
command -v kind >/dev/null || die "kind is missing: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
if ! command -v helm >/dev/null || ! command -v kubectl >/dev/null; then
  PATH="$("$ROOT/hack/install-tools.sh"):$PATH"
fi
CONTEXT="kind-$CLUSTER"

# 1. The registry container, unless it is already running.
if [[ "$(docker inspect -f '{{.State.Running}}' "$REG_NAME" 2>/dev/null || true)" != "true" ]]; then
  log "starting registry $REG_NAME on 127.0.0.1:$REG_PORT"
  docker rm -f "$REG_NAME" >/dev/null 2>&1 || true
  docker run -d --restart=always -p "127.0.0.1:$REG_PORT:5000" --network bridge \
    --name "$REG_NAME" "$REG_IMAGE" >/dev/null
fi

# 2. The cluster, unless it exists.
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$ROOT/kind-config.yaml" --wait 120s
fi

# 3. Registry aliases for containerd on every node. localhost inside a node is the node
# itself, so both names lead to the registry container over the kind network, over HTTP.
for node in $(kind get nodes --name "$CLUSTER"); do
  for host in "localhost:$REG_PORT" "$REG_NAME:5000"; do
    docker exec "$node" mkdir -p "/etc/containerd/certs.d/$host"
    printf 'server = "http://%s:5000"\n\n[host."http://%s:5000"]\n  capabilities = ["pull", "resolve"]\n' \
      "$REG_NAME" "$REG_NAME" \
      | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/$host/hosts.toml"
  done
done

# 4. Connect the registry to the cluster network, once.
if [[ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REG_NAME")" == "null" ]]; then
  docker network connect kind "$REG_NAME"
fi

# 5. Document the local registry (KEP-1755), so tools that read it find localhost:5001.
kubectl --context "$CONTEXT" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:$REG_PORT"
    hostFromClusterNetwork: "$REG_NAME:5000"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

# 6. The operator image, built from this checkout and loaded into the nodes (no push needed).
log "building $IMAGE_REPO:$IMAGE_TAG"
docker build -f "$ROOT/operator/Dockerfile" -t "$IMAGE_REPO:$IMAGE_TAG" "$ROOT"
kind load docker-image --name "$CLUSTER" "$IMAGE_REPO:$IMAGE_TAG"

# 7. The chart, with that image. Recreate strategy: the old operator stops before the new
# one starts, so an upgrade never runs two.
log "installing the chart into $NAMESPACE"
helm --kube-context "$CONTEXT" upgrade --install stagewright "$ROOT/charts/stagewright" \
  --namespace "$NAMESPACE" --create-namespace \
  --set "image.repository=$IMAGE_REPO" --set "image.tag=$IMAGE_TAG" \
  --set image.pullPolicy=IfNotPresent \
  --wait --timeout 5m
# A rebuilt image under the same tag needs a new pod to be picked up.
kubectl --context "$CONTEXT" -n "$NAMESPACE" rollout restart deployment/stagewright-operator >/dev/null
kubectl --context "$CONTEXT" -n "$NAMESPACE" rollout status deployment/stagewright-operator --timeout=180s >&2

log "ready: context $CONTEXT; build into $REG_NAME:5000/... (output.insecure: true),"
log "read images from the host at localhost:$REG_PORT; try manifests/samples/kind-local-registry.yaml"
