#!/usr/bin/env bash
# benches/slow-clients.sh: slow clients against Rampart and nginx, one after the other.
#
# Each proxy, in front of the same plaintext nginx backend (port 18080, from benches/bench.sh),
# gets BODY (1000) slow-body clients, POSTs that send 10 of their 1000 bytes and then 1 byte
# every 5 s, and READ (1000) slow-read clients, GETs of the first READ_BYTES (1 MiB) of a file
# on a 4 KiB receive buffer that read 1 KiB every 5 s, for SECS (30) seconds, while an ordinary client GETs / on a new
# TLS connection every 50 ms (benches/lib/slow_clients.py). Printed for each:
#   held          slow clients connected when sampled (SETTLE s after the last came in)
#   origin        the proxy's established connections to the backend then
#   rss/held      the proxy's RSS growth over the attack, per held client connection
#   ordinary 2xx  the share of ordinary requests answered 2xx during the whole attack
# Both run with their defaults for buffering: nginx proxy_request_buffering and
# proxy_buffering on (1 worker; a response beyond its 64 KiB of buffers goes to a temporary
# file), Rampart buffer_request_body and buffer_response (64 KiB each; a response beyond that
# is read ahead 64 KiB at a time and holds its origin connection while the client reads). Run
# with READ_BYTES=49152 for responses that fit the buffers.
#
# Usage
#   benches/slow-clients.sh [RAMPART_BINARY]     (default target/release/rampart, built if absent)
#
# Environment: BODY, READ, READ_BYTES, SECS, SETTLE, PERFBENCH_DIR (default /tmp/perfbench).
# Needs nginx, python3 and ss, and benches/bench.sh run once (backend config and certificate).
# Uses ports 18080 (backend), 18445 and 18480 (Rampart), 18447 (nginx).
set -euo pipefail
export LC_ALL=C
die() { printf '[slow-clients] ERROR: %s\n' "$*" >&2; exit 1; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
base=${PERFBENCH_DIR:-/tmp/perfbench}
body=${BODY:-1000} read=${READ:-1000} read_bytes=${READ_BYTES:-1048576} secs=${SECS:-30} settle=${SETTLE:-3}
for tool in nginx python3 ss; do command -v "$tool" >/dev/null || die "$tool not found (apt-get install nginx python3 iproute2)"; done
[[ -f $base/conf/backend.conf && -f $base/pki/ecdsa.crt ]] ||
  die "no backend config or certificate under $base: run benches/bench.sh once first"
rampart=${1:-$repo/target/release/rampart}
if [[ ! -x $rampart ]]; then
  (cd "$repo" && cargo build --release --quiet)
fi
for port in 18080 18445 18447 18480; do
  ss -Hltn "sport = :$port" | grep -q . && die "port $port is in use (a benchmark still running?)"
done
# Two thousand clients and as many proxy-side sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 2 * (body + read) + 500)) || die "open-file limit $(ulimit -n) too low for $((body + read)) clients"

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-slow.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/front.pid ]] && kill "$(cat "$work/front.pid")" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$base/run/tmp" "$work/tmp"
mkdir -m 0700 "$work/storage"

nginx -c "$base/conf/backend.conf" -g 'daemon off;' &
pids+=($!)

listening() {
  local _
  for _ in $(seq 50); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  die "nothing listens on $1"
}
listening 18080

attack() { # NAME PORT PID...
  local name=$1 port=$2
  shift 2
  python3 "$here/lib/slow_clients.py" --port "$port" --pids "$@" \
    --body "$body" --read "$read" --read-bytes "$read_bytes" --secs "$secs" --settle "$settle" >"$work/$name.json"
}

cat >"$work/rampart.yaml" <<YAML
listen: { https: "127.0.0.1:18445", http: "127.0.0.1:18480" }
storage: "$work/storage"
log: { format: text, level: error }
sites:
  - hosts: [bench.test]
    default: true
    tls: { cert: "$base/pki/ecdsa.crt", key: "$base/pki/ecdsa.key" }
    upstreams: ["http://127.0.0.1:18080"]
YAML
"$rampart" run -c "$work/rampart.yaml" >"$work/rampart.out" 2>&1 &
rampart_pid=$!
pids+=("$rampart_pid")
listening 18445
echo "[slow-clients] Rampart: $body slow-body + $read slow-read clients for ${secs}s" >&2
attack rampart 18445 "$rampart_pid"
kill "$rampart_pid"

cat >"$work/front.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 16384;
pid $work/front.pid;
error_log $work/front.error.log crit;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $work/tmp/cb; proxy_temp_path $work/tmp/px;
  fastcgi_temp_path $work/tmp/fc; uwsgi_temp_path $work/tmp/uw; scgi_temp_path $work/tmp/sc;
  upstream origin { server 127.0.0.1:18080; keepalive 64; }
  server {
    listen 127.0.0.1:18447 ssl;
    ssl_certificate $base/pki/ecdsa.crt;
    ssl_certificate_key $base/pki/ecdsa.key;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/front.conf" -g 'daemon off;' &
pids+=($!)
listening 18447
front=$(cat "$work/front.pid")
echo "[slow-clients] nginx: the same" >&2
# shellcheck disable=SC2046
attack nginx 18447 "$front" $(pgrep -P "$front")

printf '\n%s slow-body + %s slow-read clients (%s-byte responses), %ss\n' "$body" "$read" "$read_bytes" "$secs"
printf '\n| proxy | held | origin conns | RSS/held (KB) | ordinary 2xx |\n|---|---|---|---|---|\n'
for name in rampart nginx; do
  python3 - "$work/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
per = r["rss_kb"] / r["held"] if r["held"] else float("nan")
share = 100 * r["ok"] / r["total"] if r["total"] else 0
print(f"| {sys.argv[2]} | {r['held']} of {r['connected']} | {r['origin']} | {per:.1f} | {share:.1f}% ({r['ok']}/{r['total']}) |")
PY
done
