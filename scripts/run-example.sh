#!/usr/bin/env bash
# scripts/run-example.sh: build Rampart and run the example configuration.
#
# Usage: scripts/run-example.sh      (from anywhere; stop with Ctrl-C)
#
# Installs the C toolchain the TLS library (aws-lc-sys) builds with if it is missing, builds the
# release binary and runs it on config/rampart.yaml: https on port 8443 with a certificate
# for localhost from Rampart's internal CA, http on 8080. The CA is created on the first start in
# certs/internal-ca/; in another terminal:
#   curl --cacert certs/internal-ca/root.pem https://localhost:8443/
#
# Needs a Rust toolchain (rustup: https://rustup.rs); it is not installed here.
set -euo pipefail

# gcc + libc6-dev (what build-essential would bring for linking), pkg-config; ca-certificates
# for cargo's downloads and curl for trying the example.
PACKAGES="gcc libc6-dev pkg-config ca-certificates curl"

die() { printf 'scripts/run-example.sh: %s\n' "$*" >&2; exit 1; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for pkg in $PACKAGES; do
  # Whole output captured: `dpkg -s | grep -q` can die of SIGPIPE, which pipefail reports.
  [[ $(dpkg -s "$pkg" 2>/dev/null) == *$'\nStatus: install ok installed'* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root: install them or run as root"
    sudo=(sudo)
  fi
  echo "installing ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"

cargo build --release
exec "${CARGO_TARGET_DIR:-target}/release/rampart" run -c config/rampart.yaml
