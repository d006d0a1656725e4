# shellcheck shell=bash
# debian_mirror: print the Debian mirror URI this machine's apt already uses.
#
# Read at run time from /etc/apt (deb822 sources first, then the classic sources.list), so no
# mirror host is ever written into this repository. Returns non-zero when none is configured.
debian_mirror() {
  local uri=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {
      for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [[ -n "$uri" ]] || { echo "no Debian mirror found in /etc/apt" >&2; return 1; }
  echo "$uri"
}
