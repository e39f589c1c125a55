#!/usr/bin/env bash
# scripts/run-example.sh: build Rampart and run the example configuration.
#
# Usage: scripts/run-example.sh      (from anywhere; stop with Ctrl-C)
#
# Installs what the build needs (the C toolchain aws-lc-sys builds with, protoc) if it is missing, builds the
# release binary and runs it on config/rampart.yaml: https on port 8443 with a certificate
# for localhost from Rampart's internal CA, http on 8080. The CA is created on the first start in
# certs/internal-ca/; in another terminal:
#   curl --cacert certs/internal-ca/root.pem https://localhost:8443/
#
# Needs a Rust toolchain (rustup: https://rustup.rs); it is not installed here.
set -euo pipefail

# What the build needs (BUILD_PACKAGES in scripts/lib/setup.sh), and curl for trying the example.
PACKAGES="curl"

die() { printf 'scripts/run-example.sh: %s\n' "$*" >&2; exit 1; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/setup.sh
source scripts/lib/setup.sh
read -ra packages <<<"$BUILD_PACKAGES $PACKAGES"
ensure_packages "${packages[@]}"
ensure_cargo

cargo build --release
exec "${CARGO_TARGET_DIR:-target}/release/rampart" run -c config/rampart.yaml
