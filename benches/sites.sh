#!/usr/bin/env bash
# benches/sites.sh: what the number of sites costs. For N sites (two names each, `tls: internal`,
# one `respond:` route each) it measures, on one Rampart process:
#   check     wall time and peak RSS of `rampart check`
#   start     wall time from launch to /readyz answering 200 (every site has its certificate),
#             and RSS then (start_mb) and after DUR seconds of handshakes (served_mb)
#   hs        full TLS 1.3 handshakes per second of Rampart CPU time, each naming a random site
#             (benches/lib/handshakes.py), for N sites and for 1 site in the same run
#   reload    wall time of each of R SIGHUP reloads of the unchanged file (from the signal to
#             the "configuration applied" log line), its median; RSS right after the R reloads
#             (reloaded_mb: freed memory the allocator has not yet returned) and after DUR
#             seconds of handshakes again (after_reloads_served_mb); reloaded_ratio is
#             reloaded_mb over start_mb, settled_ratio the same 2 s later with no traffic
#             (settled_mb), rss_ratio after_reloads_served_mb over served_mb.
#             Meanwhile 4 keep-alive clients send requests (benches/lib/stall.py), and
#             reload_wait_max_ms / _p99_ms say how long the longest of them waited
#
# Usage
#   benches/sites.sh [--sites N] [--reloads R] [--dur SECONDS] [--rounds K]
#     benches/sites.sh --sites 10000 --reloads 10 --dur 5 --rounds 3   # issue 17's figures
#
# Each round measures 1 site, then N; the handshake figure is the median of the rounds' ratios.
#
# RAMPART=PATH measures that binary instead of building this tree (to compare two builds).
#
# Rampart runs pinned to CPU 0, the handshake clients to CPU 1. Needs openssl, python3,
# util-linux (taskset), curl. Missing Debian packages are installed with apt-get unless
# SKIP_APT=1.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
sites=10000 reloads=10 dur=5 rounds=3
while (($#)); do
  case $1 in
    --sites) sites=$2; shift;;
    --reloads) reloads=$2; shift;;
    --dur) dur=$2; shift;;
    --rounds) rounds=$2; shift;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
log() { printf '[sites] %s\n' "$*" >&2; }
die() { printf '[sites] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ${SKIP_APT:-0} != 1 ]]; then
  # shellcheck source=../scripts/lib/setup.sh
  source "$repo/scripts/lib/setup.sh"
  # shellcheck disable=SC2086 # a list of package names
  ensure_packages $BUILD_PACKAGES openssl python3 util-linux curl
fi

rampart=${RAMPART:-}
if [[ -z $rampart ]]; then
  log "cargo build --release"
  (cd "$repo" && cargo build --release -q)
  rampart=$repo/target/release/rampart
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-sites.XXXXXX")
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# config N: N sites s0.test .. s<N-1>.test, each also www.s<i>.test; s0 is the default site.
config() {
  local n=$1 dir=$2 https http admin
  https=$(free_port) http=$(free_port) admin=$(free_port)
  mkdir -p "$dir"
  {
    echo "listen: { https: \"127.0.0.1:$https\", http: \"127.0.0.1:$http\", admin: \"127.0.0.1:$admin\" }"
    echo "storage: $work/storage"
    echo "log: { format: json, level: info }"
    echo "sites:"
    awk -v n="$n" 'BEGIN {
      for (i = 0; i < n; i++) {
        printf "  - hosts: [s%d.test, www.s%d.test]\n    tls: internal\n", i, i
        if (i == 0) print "    default: true"
        print "    routes: [{ path: /, respond: { status: 200, body: \"ok\" } }]"
      }
    }'
  } >"$dir/rampart.yaml"
  echo "$https $admin"
}

# run N: every figure for N sites, one line of key=value.
run() {
  local n=$1 dir=$work/n$1 ports https admin t0
  ports=$(config "$n" "$dir")
  read -r https admin <<<"$ports"

  t0=$(now)
  /usr/bin/time -f '%M' -o "$dir/check.rss" "$rampart" check -c "$dir/rampart.yaml" >/dev/null 2>&1 \
    || die "rampart check failed on $n sites"
  local check_s check_mb
  check_s=$(since "$t0")
  check_mb=$(awk '{ printf "%.0f", $1 / 1024 }' "$dir/check.rss")

  t0=$(now)
  taskset -c 0 "$rampart" run -c "$dir/rampart.yaml" >"$dir/out.log" 2>&1 &
  pid=$!
  until curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -5 "$dir/out.log" >&2; die "rampart exited on $n sites"; }
    sleep 0.05
  done
  local start_s start_mb
  start_s=$(since "$t0")
  start_mb=$(rss_mb "$pid")

  # handshakes: full TLS 1.3 handshakes per second of Rampart's CPU time.
  handshakes() {
    local c1 c2 result done failed
    c1=$(cpu_s "$pid")
    result=$(taskset -c 1 python3 "$here/lib/handshakes.py" 127.0.0.1 "$https" "$n" "$dur" 2)
    c2=$(cpu_s "$pid")
    read -r done failed <<<"$result"
    ((failed == 0)) || log "$failed handshakes failed on $n sites"
    awk -v d="$done" -v a="$c1" -v b="$c2" 'BEGIN { printf "%.0f", (b > a) ? d / (b - a) : 0 }'
  }
  local hs_start served_mb
  hs_start=$(handshakes)
  served_mb=$(rss_mb "$pid")

  # While reloading, a few keep-alive clients note the longest any request waited.
  taskset -c 1 python3 "$here/lib/stall.py" 127.0.0.1 "$https" s0.test 4 >"$dir/stall.out" &
  local stall_pid=$!
  sleep 0.5
  local times=() i applied
  for ((i = 0; i < reloads; i++)); do
    applied=$(grep -c 'configuration applied' "$dir/out.log" || true)
    t0=$(now)
    kill -HUP "$pid"
    local waited=0
    while (($(grep -c 'configuration applied' "$dir/out.log" || true) <= applied)); do
      sleep 0.01
      waited=$((waited + 1))
      ((waited < 6000)) || die "reload $i of $n sites did not finish in 60 s"
    done
    times+=("$(since "$t0")")
  done
  kill -TERM "$stall_pid"; wait "$stall_pid" || true
  local stall_n stall_failed stall_max stall_p99
  read -r stall_n stall_failed stall_max stall_p99 <"$dir/stall.out"
  ((stall_failed == 0)) || log "$stall_failed requests failed during reloads of $n sites"
  local reload_s reload_max reloaded_mb
  reload_s=$(printf '%s\n' "${times[@]}" | median)
  reload_max=$(printf '%s\n' "${times[@]}" | sort -g | tail -1)
  # At once, the replaced configurations' pages are still in the allocator heap of the blocking
  # thread that ran the reloads; they go back when it exits, 1 s idle later (src/main.rs).
  reloaded_mb=$(rss_mb "$pid")
  sleep 2
  local settled_mb
  settled_mb=$(rss_mb "$pid")
  local hs_reloaded after_mb
  hs_reloaded=$(handshakes)
  after_mb=$(rss_mb "$pid")

  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "sites=$n check_s=$check_s check_mb=$check_mb start_s=$start_s start_mb=$start_mb" \
    "served_mb=$served_mb reload_median_s=$reload_s reload_max_s=$reload_max" \
    "reload_requests=$stall_n reload_wait_max_ms=$stall_max reload_wait_p99_ms=$stall_p99" \
    "reloaded_mb=$reloaded_mb after_reloads_served_mb=$after_mb" \
    "reloaded_ratio=$(ratio "$reloaded_mb" "$start_mb")" \
    "settled_mb=$settled_mb settled_ratio=$(ratio "$settled_mb" "$start_mb")" \
    "rss_ratio=$(ratio "$after_mb" "$served_mb")" \
    "hs_per_cpu_s=$hs_start hs_per_cpu_s_after_reloads=$hs_reloaded"
}

ratios=()
for ((round = 1; round <= rounds; round++)); do
  log "round $round: 1 site"
  one=$(run 1)
  log "round $round: $sites sites"
  many=$(run "$sites")
  echo "$one"
  echo "$many"
  hs1=$(sed 's/.*hs_per_cpu_s=\([0-9]*\).*/\1/' <<<"$one")
  hsn=$(sed 's/.*hs_per_cpu_s=\([0-9]*\).*/\1/' <<<"$many")
  ratios+=("$(awk -v a="$hsn" -v b="$hs1" 'BEGIN { printf "%.3f", a / b }')")
done
echo "handshakes per CPU second, $sites sites / 1 site, per round: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | median)"
