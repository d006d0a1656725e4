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
# then builds the operator image from operator/Dockerfile, pushes it to that registry, and
# installs the Helm chart with it, pinned by digest. Build pods run the published Kaniko image
# (the chart's kaniko.image). Idempotent: re-running reuses the registry and the cluster and
# upgrades the release (use it after changing the operator).
#
# Needs docker, kind, kubectl and helm on PATH (yours, for your OS and architecture); on
# linux/amd64 a missing kubectl or helm comes from hack/install-tools.sh.
#
# Environment: KIND_CLUSTER_NAME, KIND_NODE_IMAGE (e.g. kindest/node:v1.33.1, to match your
# kubectl), KIND_REGISTRY_NAME, KIND_REGISTRY_PORT, KIND_REGISTRY_IMAGE, STAGEWRIGHT_NAMESPACE,
# STAGEWRIGHT_KANIKO_IMAGE (default: the chart's pinned image).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER="${KIND_CLUSTER_NAME:-stagewright}"
NODE_IMAGE="${KIND_NODE_IMAGE:-}"
REG_NAME="${KIND_REGISTRY_NAME:-kind-registry}"
REG_PORT="${KIND_REGISTRY_PORT:-5001}"
# The distribution registry; pinned so every developer and CI run gets the same one.
REG_IMAGE="${KIND_REGISTRY_IMAGE:-registry:2.8.3}"
NAMESPACE="${STAGEWRIGHT_NAMESPACE:-stagewright-system}"
KANIKO_IMAGE="${STAGEWRIGHT_KANIKO_IMAGE:-}"
# The operator image goes through the local registry rather than `kind load docker-image`:
# with Docker's containerd image store (the default since Docker 29) `kind load` fails with
# "content digest ... not found" (kubernetes-sigs/kind#3795). Nodes pull localhost:5001/...
# through the hosts.toml written below.
IMAGE_REPO="localhost:$REG_PORT/stagewright/stagewright"
IMAGE_TAG="kind-dev"
RELEASE=stagewright
DEPLOYMENT="$RELEASE-operator"

log() { echo "kind-up: $*" >&2; }
die() { log "$*"; exit 1; }

command -v docker >/dev/null || die "docker is missing: install Docker (https://docs.docker.com/engine/install/)"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable"
command -v kind >/dev/null || die "kind is missing: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
command -v curl >/dev/null || die "curl is missing (used to read the operator image's digest from the registry)"
if ! command -v helm >/dev/null || ! command -v kubectl >/dev/null; then
  # hack/install-tools.sh fetches linux/amd64 binaries only; anywhere else they would not run.
  if [[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]]; then
    PATH="$PATH:$("$ROOT/hack/install-tools.sh")"
  else
    die "kubectl and helm must be on PATH (install them for $(uname -s)/$(uname -m))"
  fi
fi
CONTEXT="kind-$CLUSTER"
log "using $(command -v kind) ($(kind version)), $(command -v kubectl), $(command -v helm)"

# 1. The registry container, unless it is already running.
if [[ "$(docker inspect -f '{{.State.Running}}' "$REG_NAME" 2>/dev/null || true)" != "true" ]]; then
  log "starting registry $REG_NAME on 127.0.0.1:$REG_PORT"
  docker rm -f "$REG_NAME" >/dev/null 2>&1 || true
  docker run -d --restart=always -p "127.0.0.1:$REG_PORT:5000" --network bridge \
    --name "$REG_NAME" "$REG_IMAGE" >/dev/null
fi

# 2. The cluster, unless it exists. The list is read first, then searched: `kind get clusters |
# grep -q` under pipefail fails when grep exits at the first match and kind gets SIGPIPE.
clusters=$(kind get clusters 2>/dev/null || true)
if ! grep -qxF "$CLUSTER" <<<"$clusters"; then
  log "creating kind cluster $CLUSTER"
  create=(kind create cluster --name "$CLUSTER" --config "$ROOT/kind-config.yaml" --wait 180s)
  [[ -z "$NODE_IMAGE" ]] || create+=(--image "$NODE_IMAGE")
  "${create[@]}"
fi

# 3. Registry aliases for containerd on every node. localhost inside a node is the node
# itself, so both names lead to the registry container over the kind network, over HTTP.
# containerd reads certs.d per pull: no restart needed.
nodes=$(kind get nodes --name "$CLUSTER")
[[ -n "$nodes" ]] || die "kind cluster $CLUSTER has no nodes"
for node in $nodes; do
  for host in "localhost:$REG_PORT" "$REG_NAME:5000"; do
    docker exec "$node" mkdir -p "/etc/containerd/certs.d/$host"
    printf '[host."http://%s:5000"]\n  capabilities = ["pull", "resolve"]\n' "$REG_NAME" \
      | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/$host/hosts.toml"
  done
done

# 4. Connect the registry to the cluster network, once. Build pods reach it as
# kind-registry:5000 through the node's DNS (docker's embedded resolver, which kind makes
# reachable from pods on IPv4 clusters).
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

# 6. The operator image, built from this checkout and pushed to the local registry. Docker
# treats localhost registries as plain HTTP without any daemon setting.
log "building and pushing $IMAGE_REPO:$IMAGE_TAG"
docker build -f "$ROOT/operator/Dockerfile" -t "$IMAGE_REPO:$IMAGE_TAG" "$ROOT"
docker push "$IMAGE_REPO:$IMAGE_TAG" >/dev/null
# The digest the registry serves for the tag (an index or a manifest, whichever was pushed).
digest=$(curl -fsSI \
  -H 'Accept: application/vnd.oci.image.index.v1+json' \
  -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://localhost:$REG_PORT/v2/stagewright/stagewright/manifests/$IMAGE_TAG" \
  | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}')
[[ "$digest" == sha256:* ]] || die "no digest for $IMAGE_REPO:$IMAGE_TAG from the registry"

# 7. The chart, with that image pinned by digest: a rebuilt operator changes the pod template,
# so the upgrade rolls it (one pod at a time: the new one stands by before the old leader stops
# and hands its Lease over).
log "installing the chart into $NAMESPACE ($IMAGE_REPO@$digest)"
values=(--set "image.repository=$IMAGE_REPO" --set "image.digest=$digest"
        --set image.pullPolicy=IfNotPresent)
[[ -z "$KANIKO_IMAGE" ]] || values+=(--set "kaniko.image=$KANIKO_IMAGE")
helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" "$ROOT/charts/stagewright" \
  --namespace "$NAMESPACE" --create-namespace "${values[@]}" --wait --timeout 5m
kubectl --context "$CONTEXT" -n "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout=180s >&2

log "ready: context $CONTEXT; build into $REG_NAME:5000/... (output.insecure: true),"
log "read images from the host at localhost:$REG_PORT; try manifests/samples/kind-local-registry.yaml"
