#!/usr/bin/env bash
# benches/cluster.sh: what sharing certificates through etcd costs. Three Rampart nodes
# (127.0.0.2-4, one process each) share one etcd and one Pebble, with N sites of one name each
# (`tls: acme`). Pebble runs with its validation shortcut (PEBBLE_VA_ALWAYS_VALID=1), so the CA
# is not the bottleneck. It prints:
#   orders      orders placed cluster-wide (every node's "ordering certificate" log lines): must
#               equal N
#   duplicates  sites ordered more than once: must be 0
#   all_served  seconds from starting the nodes until every node's /readyz answers 200 (every
#               site served on every node)
#   etcd_req    gRPC requests etcd handled (its own metrics), per certificate
#   rss_mb      each node's RSS once all is served
#
# Usage
#   benches/cluster.sh [--sites N]        # default 1000 (issue 18's figures)
#
# RAMPART=PATH measures that binary instead of building this tree. Needs pebble, etcd-server,
# openssl, python3, curl; missing Debian packages are installed with apt-get unless SKIP_APT=1.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
sites=1000
while (($#)); do
  case $1 in
    --sites) sites=$2; shift;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ${SKIP_APT:-0} != 1 ]]; then
  # shellcheck source=../scripts/lib/setup.sh
  source "$repo/scripts/lib/setup.sh"
  # shellcheck disable=SC2086 # a list of package names
  ensure_packages $BUILD_PACKAGES pebble etcd-server openssl python3 curl
fi

rampart=${RAMPART:-}
if [[ -z $rampart ]]; then
  log "cargo build --release"
  (cd "$repo" && cargo build --release -q)
  rampart=$repo/target/release/rampart
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-cluster.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "work dir $work, $sites sites"
python3 "$here/lib/cluster.py" "$rampart" "$work" "$sites"
