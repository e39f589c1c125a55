#!/usr/bin/env bash
# benches/ab.sh: two Rampart builds against each other, alternating in the same run.
#
# For a change to the request path: a few percent is within the spread of two separate
# benches/bench.sh runs, so this compares builds directly. Each round runs A then B on the same
# plaintext nginx backend, Rampart pinned to CPU 0 and the load generator plus the backend on
# CPU 1 (the layout of benches/bench.sh), and reports per-round req/s, medians and B/A for
#   h1  wrk -t1 -c64, HTTPS keep-alive, 1 KiB body
#   h2  h2load -t1 -c8 -m8, 1 KiB body
# Each measurement is preceded by a 1 s warm-up that is not counted.
#
# Usage
#   benches/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]        (ROUNDS default 3, seconds per run: DUR=4)
#   e.g. cp target/release/rampart /tmp/rampart-old; <change>; cargo build --release;
#        benches/ab.sh /tmp/rampart-old target/release/rampart 5
#
# Needs the backend config and certificate that benches/bench.sh leaves in $PERFBENCH_DIR
# (default /tmp/perfbench): run benches/bench.sh once first. Uses ports 18080 (backend), 18445
# and 18480, like benches/bench.sh: do not run both at once.
set -euo pipefail
export LC_ALL=C

die() { printf '[ab] ERROR: %s\n' "$*" >&2; exit 1; }

(($# >= 2)) || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 2; }
# shellcheck source=benches/lib/pair.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pair.sh"
pair_setup ab "$1" "$2" nginx wrk h2load taskset
rounds=${3:-3} dur=${DUR:-4}
cat >"$work/rampart.yaml" <<YAML
listen: { https: "127.0.0.1:18445", http: "127.0.0.1:18480" }
storage: "$work/storage"
log: { format: text, level: warn }
downstream:
  idle_timeout: 300s
  h2_max_streams: 256
  cipher_suites: [TLS_AES_128_GCM_SHA256]   # as benches/bench.sh (the suite peers.sh pins)
upstream: { pool_idle_timeout: 300s, pool_max_idle: 256 }
sites:
  - hosts: [bench.test]
    default: true
    tls: { cert: "$base/pki/ecdsa.crt", key: "$base/pki/ecdsa.key" }
    upstreams: ["http://127.0.0.1:18080"]
YAML
# Builds older than `downstream.cipher_suites` (they negotiate the client's AES-256 choice)
# are compared with both on defaults instead.
if ! "$a" check -c "$work/rampart.yaml" >/dev/null 2>&1 || ! "$b" check -c "$work/rampart.yaml" >/dev/null 2>&1; then
  sed -i '/cipher_suites:/d' "$work/rampart.yaml"
  printf '[ab] a build does not know downstream.cipher_suites: both run with the default suites\n' >&2
fi
for bin in "$a" "$b"; do "$bin" check -c "$work/rampart.yaml" >/dev/null || die "$bin rejects the bench config"; done

taskset -c 1 nginx -c "$base/conf/backend.conf" -g 'daemon off;' >"$work/backend.out" 2>&1 &
backend_pid=$!

# One measurement: prints req/s of binary $1 under load $2.
measure() {
  taskset -c 0 "$1" run -c "$work/rampart.yaml" >"$work/rampart.out" 2>&1 &
  rampart_pid=$!
  pair_listening 50
  local url=https://127.0.0.1:18445/1k rate
  case $2 in
    h1)
      taskset -c 1 wrk -t1 -c64 -d1s "$url" >/dev/null
      rate=$(taskset -c 1 wrk -t1 -c64 -d"${dur}s" "$url" | awk '/^Requests\/sec/ {print int($2)}')
      ;;
    h2)
      local h2=(taskset -c 1 h2load -t1 -c8 -m8 --connect-to=127.0.0.1:18445 https://bench.test:18445/1k)
      "${h2[@]}" -D1 >/dev/null
      rate=$("${h2[@]}" -D"$dur" | awk '/^finished in/ {print int($4)}')
      ;;
  esac
  pair_stop
  [[ -n $rate ]] || die "no figure from the $2 load on $1"
  echo "$rate"
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}'; }

printf 'A = %s\nB = %s\n%s rounds of %ss, A then B in each\n\n' "$a" "$b" "$rounds" "$dur"
printf '| load | A req/s (rounds) | B req/s (rounds) | A median | B median | B/A |\n|---|---|---|---|---|---|\n'
for load in h1 h2; do
  ra=() rb=()
  for _ in $(seq "$rounds"); do
    ra+=("$(measure "$a" "$load")")
    rb+=("$(measure "$b" "$load")")
  done
  ma=$(median "${ra[@]}") mb=$(median "${rb[@]}")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$load" "${ra[*]}" "${rb[*]}" "$ma" "$mb" \
    "$(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}')"
done
