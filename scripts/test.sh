#!/usr/bin/env bash
# scripts/test.sh: install what the tests need, then run every check CI runs.
#
# Usage: scripts/test.sh          (from anywhere; CI calls it through .ci/run)
#
#   1. Debian packages the tests use (Pebble, etcd, curl, openssl, nghttp2-client, ...) and what
#      the build needs (C toolchain, protoc); apt-get runs only when one of them is missing.
#   2. scripts/check-commits.sh (commit messages, CONTRIBUTING.md)
#   3. cargo fmt --check
#   4. cargo clippy --all-targets --locked -- -D warnings
#   5. cargo test --locked         (unit tests and the end-to-end tests, Pebble included)
#   6. scripts/check-deb.sh        (the Debian package's contents; installs cargo-deb once)
#
# Needs a Rust toolchain with rustfmt and clippy (rustup); it is not installed here.
set -euo pipefail

# Everything the tests need from Debian beside the build's (BUILD_PACKAGES in scripts/lib/setup.sh).
# systemd: systemd-socket-activate for tests/systemd.rs; etcd-server: the cluster tests' store;
# knot, knot-dnsutils: the DNS-01 tests' authoritative server (knotd) and kdig, knsupdate.
PACKAGES="git pebble curl openssl build-essential nghttp2-client procps iproute2 systemd etcd-server knot knot-dnsutils"

die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/setup.sh
source scripts/lib/setup.sh
read -ra packages <<<"$BUILD_PACKAGES $PACKAGES"
ensure_packages "${packages[@]}"
ensure_cargo
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

# One build from a clean clone: incremental state would only add gigabytes to the target dir.
export CARGO_INCREMENTAL=0
# The build needs about 3.5 GB here (test binaries and the release .deb build); a CI machine once
# ran out, so a failed run says how much there was.
df -h . | awk 'NR == 2 { print "scripts/test.sh: " $4 " free on " $6 " for target/ (about 3.5 GB needed)" }' >&2

results=$(mktemp)
trap 'rm -f "$results"' EXIT

set -x
scripts/check-commits.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked 2>&1 | tee "$results"
scripts/check-deb.sh
set +x

# One closing line for the whole run: cargo prints a result per test binary, the last of which
# (the doc tests) has nothing in it.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
