#!/usr/bin/env bash
# Install the real cosign (the client users verify Stagewright's signatures with) into the
# project's cache, for the cluster tier's signing tests.
#
# Why this way: these machines reach only PyPI, npm and Debian's packages. Debian 12 has no
# cosign; Debian's unstable suite packages cosign 3.1.1, a static Go binary that runs on
# Debian 12 as it is. It is fetched through the machine's own Debian mirror with a private
# sources list and state directory (the system's apt state is never touched, nothing from
# unstable is installed into the system), and unpacked with dpkg-deb into the cache.
#
# Idempotent: a second run only checks the binary. Prints the bin dir on stdout.
set -euo pipefail

COSIGN_VERSION="3.1.1"
CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
BIN_DIR="$CACHE_DIR/bin"

log() { echo "install-cosign: $*" >&2; }

# Debian's build reports "GitVersion: devel": the package version is kept beside the binary.
installed() {
  [[ -x "$BIN_DIR/cosign" && "$(cat "$BIN_DIR/.cosign.version" 2>/dev/null)" == "$COSIGN_VERSION"* ]] \
    && "$BIN_DIR/cosign" version >/dev/null 2>&1
}

if installed; then
  echo "$BIN_DIR"
  exit 0
fi

# shellcheck source=hack/lib/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-mirror.sh"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "fetching cosign from Debian unstable (private apt state)"
DEB=$(debian_download "$WORK" sid "" "cosign=${COSIGN_VERSION}*")
dpkg-deb -x "$DEB" "$WORK/root"
mkdir -p "$BIN_DIR"
install -m 0755 "$WORK/root/usr/bin/cosign" "$BIN_DIR/.cosign.new"
mv -f "$BIN_DIR/.cosign.new" "$BIN_DIR/cosign"
dpkg-deb -f "$DEB" Version > "$BIN_DIR/.cosign.version"
installed || { log "cosign $COSIGN_VERSION does not run here"; exit 1; }
echo "$BIN_DIR"
