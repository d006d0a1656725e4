#!/usr/bin/env bash
# Fetch Debian's busybox-static for arm64 into the project's cache: the rootfs of the sandbox's
# arm64 base image, for the cluster tier's multi-platform builds (tests/cluster/test_platforms.py).
#
# Why this way: these machines pull no images and run amd64 only. Debian builds busybox-static
# for arm64 too; it is fetched through the machine's own Debian mirror (read from /etc/apt at
# run time, never written here) with a private sources list, architecture and state directory,
# so the system's apt state is never touched and nothing foreign is installed. The binary is
# checked to be a static aarch64 ELF (e_machine 183) before it is kept.
#
# Idempotent: a second run only checks the binary. Prints its path on stdout.
set -euo pipefail

CACHE_DIR="${STAGEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagewright}"
OUT_DIR="$CACHE_DIR/busybox-static-arm64"
BUSYBOX="$OUT_DIR/busybox"

log() { echo "fetch-busybox-arm64: $*" >&2; }

# An ELF for AArch64: magic, 64-bit, little-endian, e_machine (bytes 18-19) 183 = 0xb7.
aarch64_elf() {
  [[ -f "$1" && "$(od -An -tx1 -N4 "$1" | tr -d ' \n')" == "7f454c46" \
     && "$(od -An -tx1 -j4 -N1 "$1" | tr -d ' \n')" == "02" \
     && "$(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n')" == "b700" ]]
}

if aarch64_elf "$BUSYBOX"; then
  echo "$BUSYBOX"
  exit 0
fi

# shellcheck source=hack/lib/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-mirror.sh"
# shellcheck source=/dev/null
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "fetching busybox-static:arm64 from Debian $SUITE (private apt state)"
DEB=$(debian_download "$WORK" "$SUITE" arm64 busybox-static)
dpkg-deb -x "$DEB" "$WORK/root"
aarch64_elf "$WORK/root/bin/busybox" || { log "the package's /bin/busybox is no aarch64 ELF"; exit 1; }
mkdir -p "$OUT_DIR"
install -m 0755 "$WORK/root/bin/busybox" "$OUT_DIR/.busybox.new"
mv -f "$OUT_DIR/.busybox.new" "$BUSYBOX"
dpkg-deb -f "$DEB" Version > "$OUT_DIR/version"
echo "$BUSYBOX"
