#!/usr/bin/env bash
# benches/ipr.sh: instructions per request of two Rampart builds, counted by callgrind.
#
# benches/ab.sh compares req/s, which on a shared machine swings by 30% between rounds when
# other tenants are busy. Instructions are counted, not timed: the same binary and load give
# the same count within a fraction of a percent, whatever else the machine does, so a change
# of 1% to the request path shows. Each build serves, under valgrind --tool=callgrind, a warm-up
# (not counted), then exactly N requests of each load; the counters are zeroed before and
# dumped after, so start-up is not in the figure.
#   h1  h2load --h1 -c4 -n N, HTTPS keep-alive, 1 KiB body
#   h2  h2load -c4 -m8 -n N, 1 KiB body
# Instructions of the whole Rampart process (TLS, HTTP, proxy, origin client) per request.
#
# Usage
#   benches/ipr.sh OLD_BINARY NEW_BINARY [N]        (N default 4000 requests per load)
#
# Needs valgrind and what benches/ab.sh needs (run benches/bench.sh once first for the
# backend config and certificate). Uses ports 18080, 18445 and 18480.
set -euo pipefail
export LC_ALL=C
die() { printf '[ipr] ERROR: %s\n' "$*" >&2; exit 1; }
(($# >= 2)) || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 2; }
command -v valgrind >/dev/null || die "valgrind not found: apt-get install valgrind"
# shellcheck source=benches/lib/pair.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pair.sh"
pair_setup ipr "$1" "$2" nginx h2load valgrind callgrind_control
n=${3:-4000}
cat >"$work/rampart.yaml" <<YAML
listen: { https: "127.0.0.1:18445", http: "127.0.0.1:18480" }
storage: "$work/storage"
log: { format: text, level: warn }
downstream: { idle_timeout: 300s, handshake_timeout: 60s, cipher_suites: [TLS_AES_128_GCM_SHA256] }
upstream: { pool_idle_timeout: 300s, response_header_timeout: 60s }
sites:
  - hosts: [bench.test]
    default: true
    tls: { cert: "$base/pki/ecdsa.crt", key: "$base/pki/ecdsa.key" }
    upstreams: ["http://127.0.0.1:18080"]
YAML
for bin in "$a" "$b"; do "$bin" check -c "$work/rampart.yaml" >/dev/null || die "$bin rejects the bench config"; done

nginx -c "$base/conf/backend.conf" -g 'daemon off;' >"$work/backend.out" 2>&1 &
backend_pid=$!

# Instructions per request of binary $1 under load $2.
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    "$1" run -c "$work/rampart.yaml" >"$work/rampart.out" 2>&1 &
  rampart_pid=$!
  pair_listening 600 # valgrind starts slowly
  local load=(h2load -c4 -m8 --connect-to=127.0.0.1:18445 https://bench.test:18445/1k)
  [[ $2 == h1 ]] && load=(h2load --h1 -c4 --connect-to=127.0.0.1:18445 https://bench.test:18445/1k)
  "${load[@]}" -n 400 >/dev/null # warm-up: pools, caches, lazily built state
  callgrind_control -z "$rampart_pid" >/dev/null 2>&1
  local done_
  done_=$("${load[@]}" -n "$n" | awk '/^requests:/ {print $8}')
  callgrind_control -d "$rampart_pid" >/dev/null 2>&1
  pair_stop
  [[ $done_ == "$n" ]] || die "$2 on $1: $done_ of $n requests succeeded"
  # The dump after zeroing is the file with the highest part number.
  local dump instructions
  dump=$(ls -v "$work"/cg.*.* 2>/dev/null | tail -1)
  instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  rm -f "$work"/cg.*
  [[ -n $instructions ]] || die "no instruction count in $dump"
  awk -v i="$instructions" -v n="$n" 'BEGIN {printf "%.0f", i / n}'
}

printf 'A = %s\nB = %s\n%s requests per load, instructions per request (callgrind)\n\n' "$a" "$b" "$n"
printf '| load | A | B | B/A |\n|---|---|---|---|\n'
for load in h1 h2; do
  ia=$(count "$a" "$load") ib=$(count "$b" "$load")
  printf '| %s | %s | %s | %s |\n' "$load" "$ia" "$ib" "$(awk -v a="$ia" -v b="$ib" 'BEGIN {printf "%.4f", b / a}')"
done
