# scripts/lib/setup.sh: sourced by the scripts beside it; installs Debian packages and finds cargo.
#
#   ensure_packages PKG...   apt-get installs the missing ones (update first), as root or via sudo
#   BUILD_PACKAGES           what building Rampart needs from Debian: the C toolchain aws-lc-sys
#                            builds with, protoc for etcd-client's gRPC code, CA roots for cargo
#   ensure_cargo             puts ~/.cargo/bin on PATH when needed; fails clearly without cargo
# Callers define die() and set -euo pipefail.

BUILD_PACKAGES="gcc libc6-dev pkg-config protobuf-compiler ca-certificates"

ensure_packages() {
  local pkg missing=() sudo=()
  for pkg in "$@"; do
    # Whole output captured: `dpkg -s | grep -q` can die of SIGPIPE, which pipefail reports.
    [[ $(dpkg -s "$pkg" 2>/dev/null) == *$'\nStatus: install ok installed'* ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root: install them or run as root"
    sudo=(sudo)
  fi
  echo "installing ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

ensure_cargo() {
  # rustup puts cargo in ~/.cargo/bin, which non-login shells (CI) may not have on PATH.
  if ! command -v cargo >/dev/null && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
}
