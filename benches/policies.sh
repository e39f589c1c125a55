#!/usr/bin/env bash
# benches/policies.sh: the cost of gateway policies. Requests/s through one Rampart process on a
# plain proxy route versus a route with a rate limit + JWT auth (ES256) + least_conn balancing,
# measured in the same run, alternating, and reported as the median of per-round ratios.
#
# Usage
#   benches/policies.sh [--reps N] [--dur SECONDS] [--conns N]
#     benches/policies.sh --reps 5 --dur 5      # the figures in issue 4's closing note
#
# Setup: one site, two routes on the same nginx backends (plaintext, /1k = 1 KiB):
#   /plain/  upstreams [b1]                                  (round robin, no policy)
#   /gw/     upstreams [b1, b2], balance least_conn, rate_limit 1e9/s keyed by client_ip
#            (never refuses, but every request takes a token), auth.jwt with an ES256 public key
#            (every request verifies a signature), forward_claims sub → X-User-Id
# Rampart runs pinned to CPU 0; the backends and the load generators (wrk for HTTP/1.1 with
# CONNS keep-alive connections, h2load -c8 -m8 for HTTP/2) share CPU 1. Every request of both
# routes carries the same Authorization header, so the plain route parses the same bytes.
#
# Needs: nginx, wrk, nghttp2-client (h2load), openssl, python3, util-linux (taskset). Missing
# Debian packages are installed with apt-get unless SKIP_APT=1.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
reps=5 dur=5 conns=32
while (($#)); do
  case $1 in
    --reps) reps=$2; shift;;
    --dur) dur=$2; shift;;
    --conns) conns=$2; shift;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
log() { printf '[policies] %s\n' "$*" >&2; }
die() { printf '[policies] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ${SKIP_APT:-0} != 1 ]]; then
  # shellcheck source=../scripts/lib/setup.sh
  source "$repo/scripts/lib/setup.sh"
  # shellcheck disable=SC2086 # a list of package names
  ensure_packages $BUILD_PACKAGES nginx wrk nghttp2-client openssl python3 util-linux
fi

log "cargo build --release"
(cd "$repo" && cargo build --release -q)
rampart=$repo/target/release/rampart

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-policies.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(free_port) b2=$(free_port) https=$(free_port) http=$(free_port)

# Backends: nginx, one worker, 1 KiB body.
mkdir -p "$work/www" "$work/nginx"
head -c 1024 /dev/zero | tr '\0' x >"$work/www/1k"
# nginx's workers run as www-data: the document root must be readable by them.
chmod 0755 "$work" "$work/www"
chmod 0644 "$work/www/1k"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$b1; listen 127.0.0.1:$b2; root $work/www; }
}
EOF
taskset -c 1 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" &
pids+=($!)

# Certificate, JWT key and token (ES256: JWS wants the raw r||s signature, openssl gives DER).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/jwt.key"
openssl ec -in "$work/jwt.key" -pubout -out "$work/jwt.pub" 2>/dev/null
token=$(python3 - "$work/jwt.key" <<'PY'
import base64, json, subprocess, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "bench-user", "iss": "https://bench.test", "aud": "bench",
                         "exp": int(time.time()) + 86400}).encode())
signing_input = f"{header}.{claims}".encode()
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", sys.argv[1]], input=signing_input,
                     capture_output=True, check=True).stdout
# DER SEQUENCE { INTEGER r, INTEGER s } -> 32-byte r || 32-byte s
def integers(d):
    i = 2 if d[1] < 0x80 else 2 + (d[1] & 0x7f)
    out = []
    while i < len(d):
        length = d[i + 1]
        out.append(int.from_bytes(d[i + 2:i + 2 + length], "big"))
        i += 2 + length
    return out
r, s = integers(der)
print(f"{header}.{claims}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
PY
)

cat >"$work/rampart.yaml" <<EOF
listen: { https: "127.0.0.1:$https", http: "127.0.0.1:$http" }
storage: $work/storage
log: { format: text, level: warn }
downstream: { idle_timeout: 300s }
upstream: { pool_idle_timeout: 300s, pool_max_idle: 256 }
sites:
  - hosts: [bench.test]
    default: true
    tls: { cert: $work/tls.crt, key: $work/tls.key }
    routes:
      - path: /plain/
        strip_prefix: true
        upstreams: ["http://127.0.0.1:$b1"]
      - path: /gw/
        strip_prefix: true
        upstreams: ["http://127.0.0.1:$b1", "http://127.0.0.1:$b2"]
        balance: least_conn
        rate_limit: { rate: 1000000000/s, burst: 1000000000, key: client_ip }
        auth:
          jwt:
            keys: $work/jwt.pub
            issuer: https://bench.test
            audience: bench
            algorithms: [ES256]
            forward_claims: { sub: X-User-Id }
EOF
"$rampart" check -c "$work/rampart.yaml" >/dev/null || die "rampart check rejected the bench config"
taskset -c 0 "$rampart" run -c "$work/rampart.yaml" 2>"$work/rampart.err" &
pids+=($!)
for _ in $(seq 100); do
  curl -sk -o /dev/null "https://127.0.0.1:$https/plain/1k" && break
  sleep 0.1
done
auth="Authorization: Bearer $token"
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "$auth" "https://127.0.0.1:$https/plain/1k")
[[ $code == 200 ]] || { cat "$work/rampart.err" >&2; die "the plain route answered $code, not 200"; }
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "$auth" "https://127.0.0.1:$https/gw/1k")
[[ $code == 200 ]] || { cat "$work/rampart.err" >&2; die "the policy route answered $code, not 200"; }
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$https/gw/1k")
[[ $code == 401 ]] || die "the policy route answered $code without a token, not 401: auth is not on"

h1() { taskset -c 1 wrk -t1 -c"$conns" -d"${dur}s" -H "$auth" "https://127.0.0.1:$https/$1/1k" \
         | awk '/^Requests\/sec:/{print $2} /Non-2xx|Socket errors/{print "ERR " $0 > "/dev/stderr"}'; }
h2() { taskset -c 1 h2load -t1 -c8 -m8 -D"$dur" -H "$auth" "https://127.0.0.1:$https/$1/1k" 2>/dev/null \
         | awk '/^finished in/{gsub(/,/,""); print $4} /^status codes:/{gsub(/,/,""); if ($5 + $7 + $9 > 0) print "ERR " $0 > "/dev/stderr"}'; }

median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '| round | proto | plain req/s | policies req/s | ratio |\n|---|---|---|---|---|\n'
declare -A ratios=()
for ((round = 1; round <= reps; round++)); do
  for proto in h1 h2; do
    # Alternate which route goes first so drift (thermal, page cache) does not favour one.
    if ((round % 2)); then p=$($proto plain); g=$($proto gw); else g=$($proto gw); p=$($proto plain); fi
    ratio=$(awk -v g="$g" -v p="$p" 'BEGIN{printf "%.3f", g / p}')
    ratios[$proto]+="$ratio "
    printf '| %d | %s | %.0f | %.0f | %s |\n' "$round" "$proto" "$p" "$g" "$ratio"
  done
done
for proto in h1 h2; do
  printf '%s median ratio (policies / plain): %s\n' "$proto" "$(tr ' ' '\n' <<<"${ratios[$proto]}" | grep . | median)"
done
