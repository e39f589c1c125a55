#!/usr/bin/env bash
# scripts/test.sh: install what the tests need, then run every check CI runs.
#
# Usage: scripts/test.sh          (from anywhere; CI calls it through .ci/run)
#
#   1. Debian packages the tests use (Pebble, curl, openssl, nghttp2-client, ...) and the C
#      toolchain aws-lc-sys builds with; apt-get runs only when one of them is missing.
#   2. cargo fmt --check
#   3. cargo clippy --all-targets --locked -- -D warnings
#   4. cargo test --locked         (unit tests and the end-to-end tests, Pebble included)
#   5. scripts/check-deb.sh        (the Debian package's contents; installs cargo-deb once)
#
# Needs a Rust toolchain with rustfmt and clippy (rustup); it is not installed here.
set -euo pipefail

# Everything the build and the tests need from Debian, in one place.
# systemd: systemd-socket-activate for tests/systemd.rs.
PACKAGES="pebble curl openssl ca-certificates build-essential pkg-config nghttp2-client procps iproute2 systemd"

die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }
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

# rustup puts cargo in ~/.cargo/bin, which non-login shells (CI) may not have on PATH.
if ! command -v cargo >/dev/null && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

results=$(mktemp)
trap 'rm -f "$results"' EXIT

set -x
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked 2>&1 | tee "$results"
scripts/check-deb.sh
set +x

# One closing line for the whole run: cargo prints a result per test binary, the last of which
# (the doc tests) has nothing in it.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
