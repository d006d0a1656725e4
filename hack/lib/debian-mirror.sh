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

# debian_download DIR SUITE ARCH PACKAGE: download one package (NAME or NAME=VERSION-GLOB) of
# SUITE (bookworm, sid, ...) for ARCH (empty: this machine's) from the mirror above into DIR,
# with a private sources list and apt state under DIR: the system's apt state is never
# touched and nothing is installed. Prints the .deb's path.
debian_download() {
  local dir=$1 suite=$2 arch=$3 package=$4 mirror deb
  mirror=$(debian_mirror) || return 1
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  local opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Debug::NoLocking=1)
  if [[ -n "$arch" ]]; then
    echo "deb [arch=$arch] $mirror $suite main" > "$dir/sources.list"
    opts+=(-o "APT::Architectures=$arch")
    package="${package%%=*}:$arch${package#"${package%%=*}"}"
  else
    echo "deb $mirror $suite main" > "$dir/sources.list"
  fi
  apt-get "${opts[@]}" update -qq >&2
  (cd "$dir" && apt-get "${opts[@]}" download "$package" >&2)
  deb=$(find "$dir" -maxdepth 1 -name "${package%%[:=]*}_*.deb" -print -quit)
  [[ -n "$deb" ]] || { echo "apt downloaded no $package" >&2; return 1; }
  echo "$deb"
}
