#!/usr/bin/env bash
# Delete the kind cluster made by hack/kind-up.sh, and its registry container.
#
# The registry container is shared by every kind cluster that follows kind's local-registry
# guide; pass --keep-registry to leave it (and the images in it) running.
set -euo pipefail

CLUSTER="${KIND_CLUSTER_NAME:-stagewright}"
REG_NAME="${KIND_REGISTRY_NAME:-kind-registry}"
KEEP_REGISTRY=false

log() { echo "kind-down: $*" >&2; }
die() { log "$*"; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --keep-registry) KEEP_REGISTRY=true ;;
    -h|--help) echo "usage: $0 [--keep-registry]"; exit 0 ;;
    *) die "unknown argument: $arg (usage: $0 [--keep-registry])" ;;
  esac
done

command -v docker >/dev/null || die "docker is missing: nothing to tear down without it"
command -v kind >/dev/null || die "kind is missing: install it, or delete the cluster's containers with docker"

# Read the list, then search it: `kind get clusters | grep -q` under pipefail fails when grep
# exits at the first match and kind gets SIGPIPE.
clusters=$(kind get clusters 2>/dev/null || true)
if grep -qxF "$CLUSTER" <<<"$clusters"; then
  log "deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
else
  log "no kind cluster named $CLUSTER"
fi

if [[ "$KEEP_REGISTRY" == false ]] && docker inspect "$REG_NAME" >/dev/null 2>&1; then
  log "removing registry container $REG_NAME"
  docker rm -f "$REG_NAME" >/dev/null
fi
