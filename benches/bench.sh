#!/usr/bin/env bash
# benches/bench.sh: Rampart against nginx (and optionally HAProxy, Caddy, hitch) on loopback.
#
# A wrapper around the shared peer benchmark ../shared/bench/peers.sh (beside this repository).
# Both proxies get the same ECDSA P-256 certificate and the same plaintext nginx backend, and each
# is pinned to CPU 0 while the load generators run on CPU 1. The report gives per-proxy-core
# figures and Rampart/nginx ratios measured in the same rounds for:
#   hs_ecdsa  full TLS 1.3 handshakes/s (openssl s_time -new: a new, non-resumed connection each)
#   h1        HTTP/1.1 keep-alive req/s, 1 KiB body
#   h2        HTTP/2 req/s, 1 KiB body
#   memory    RSS per idle TLS connection, IDLE_CONNS (5000) held at once
#
# Usage
#   benches/bench.sh [peers.sh options]
#     benches/bench.sh --reps 3 --dur 4          # the figures in the issue's closing note
#     PEERS="nginx haproxy caddy hitch" benches/bench.sh
#     benches/bench.sh --metrics "hs_ecdsa h1 h2 bulk lat" --no-speed
#   Options are passed to peers.sh unchanged and win over the defaults below; see
#   `benches/bench.sh --help` for all of them.
#
# Steps
#   1. installs the Debian packages peers.sh checks for, if any is missing (apt-get; its preflight
#      wants every peer's binary even with --peers nginx). Installing nginx/haproxy may start their
#      stock services where systemd runs; the benchmark itself only uses ports 18000-18999.
#   2. cargo build --release
#   3. writes a launcher into a temporary directory. peers.sh runs it as "ours" (pinned to CPU 0)
#      with BENCH_LISTEN, BENCH_BACKEND, BENCH_CERT and BENCH_KEY exported; it writes the Rampart
#      config from them and execs target/release/rampart run -c <config>. The config is first
#      checked with `rampart check` against a throwaway certificate, so a bad config fails in
#      seconds rather than after the PKI and openssl-speed steps.
#   4. runs peers.sh; the summary is printed and its path shown at the end, and the Rampart config
#      used is copied next to it.
#
# Environment
#   PEERS                    peers besides Rampart (default "nginx"; nginx is the ratio reference)
#   METRICS                  default "hs_ecdsa h1 h2"
#   IDLE_CONNS               idle connections held in the memory test (default 5000)
#   PERFBENCH_DIR            peers.sh's work and results directory (default /tmp/perfbench)
#   RAMPART_BENCH_HTTP_PORT  Rampart's (unused) plain-HTTP listener (default 18480, outside the
#                            ports peers.sh uses: 18080 18081 18441-18445 18479 18541-18545 18644)
#   PEERS_SH                 path of peers.sh (default ../shared/bench/peers.sh beside the repo)
#   SKIP_APT=1               do not check or install Debian packages
#
# Results: $PERFBENCH_DIR/results/<timestamp>/summary.md ($PERFBENCH_DIR/results/latest).
# When Rampart fails: $PERFBENCH_DIR/run/ours.out (its output) and .../results/latest/logs/.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
peers_sh=${PEERS_SH:-"$(dirname "$0")/../../shared/bench/peers.sh"}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -f $peers_sh ]] || die "peers.sh not found at $peers_sh: this script expects the shared
  benchmark checked out beside the repository (../shared/bench/peers.sh), or PEERS_SH=/path/to/peers.sh"
peers_sh=$(cd "$(dirname "$peers_sh")" && pwd)/$(basename "$peers_sh")

keep=${KEEP:-0}
for arg in "$@"; do
  case $arg in
    -h|--help) usage; printf '\n--- peers.sh --help ---\n'; bash "$peers_sh" --help; exit 0;;
    --keep) keep=1;;
  esac
done

PEERS=${PEERS:-nginx}
METRICS=${METRICS:-"hs_ecdsa h1 h2"}
export IDLE_CONNS=${IDLE_CONNS:-5000}
http_port=${RAMPART_BENCH_HTTP_PORT:-18480}
base=${PERFBENCH_DIR:-/tmp/perfbench}

# ---------------------------------------------------------------- packages --
# Everything peers.sh's preflight checks for (it needs all peers' binaries whatever --peers says).
PACKAGES="nginx haproxy caddy hitch wrk nghttp2-client openssl curl iproute2 procps util-linux"
if [[ ${SKIP_APT:-0} != 1 ]]; then
  # shellcheck source=../scripts/lib/setup.sh
  source "$repo/scripts/lib/setup.sh"
  # shellcheck disable=SC2086 # a list of package names
  ensure_packages $BUILD_PACKAGES $PACKAGES
fi

# ------------------------------------------------------------------- build --
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
log "cargo build --release"
(cd "$repo" && cargo build --release)
rampart=${CARGO_TARGET_DIR:-$repo/target}/release/rampart
[[ $rampart == /* ]] || rampart=$repo/$rampart
[[ -x $rampart ]] || die "no binary at $rampart after the build"

# ---------------------------------------------------------------- launcher --
grep -qw -- "$http_port" "$peers_sh" && die "port $http_port is used by peers.sh: set RAMPART_BENCH_HTTP_PORT"
ss -Hltn "sport = :$http_port" | grep -q . && die "port $http_port is in use: set RAMPART_BENCH_HTTP_PORT"

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-bench.XXXXXX")
[[ $work != *[[:space:]]* ]] || die "temporary directory $work contains whitespace"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() { if ((keep)); then log "--keep: launcher and config left in $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
mkdir -m 0700 "$work/storage"

# peers.sh remembers the first word of the "ours" command and, to clean up after an aborted run,
# stops a leftover process whose command line contains its name. The launcher execs Rampart, so
# the config file carries the same name and appears in Rampart's command line.
ours=$work/rampart-bench-ours
config=$work/rampart-bench-ours.yaml
cat >"$ours" <<EOF
#!/usr/bin/env bash
# Generated by benches/bench.sh. peers.sh runs it as "ours" with BENCH_* exported; it writes the
# Rampart config from them and execs Rampart, so peers.sh measures Rampart's own process.
# "\$0 check" validates the config instead of running it.
set -euo pipefail
: "\${BENCH_LISTEN:?not set: run by peers.sh}" "\${BENCH_BACKEND:?}" "\${BENCH_CERT:?}" "\${BENCH_KEY:?}"
cat >"$config" <<YAML
listen:
  https: "\$BENCH_LISTEN"
  http: "127.0.0.1:$http_port"
storage: "$work/storage"
log: { format: text, level: warn }
downstream:
  handshake_timeout: 10s
  header_timeout: 10s
  idle_timeout: 300s
  max_header_bytes: 64KiB
  max_headers: 100
  h2_max_streams: 256
  # The one suite peers.sh configures on every peer, so all do the same work per byte
  # (verify.txt in the results lists what each negotiated).
  cipher_suites: [TLS_AES_128_GCM_SHA256]
upstream:
  connect_timeout: 5s
  response_header_timeout: 30s
  pool_idle_timeout: 300s
  pool_max_idle: 256
sites:
  - hosts: [bench.test]
    default: true   # the handshake test sends no SNI and no Host; wrk connects to 127.0.0.1
    tls: { cert: "\$BENCH_CERT", key: "\$BENCH_KEY" }
    upstreams: ["http://\$BENCH_BACKEND"]
YAML
if [[ \${1:-} == check ]]; then exec "$rampart" check -c "$config"; fi
exec "$rampart" run -c "$config"
EOF
chmod 0755 "$ours"

# Fail fast on a config Rampart rejects: check it against a throwaway certificate.
log "rampart check on the bench config"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$work/check.key" -out "$work/check.crt" 2>/dev/null
if ! BENCH_LISTEN=127.0.0.1:18445 BENCH_BACKEND=127.0.0.1:18080 BENCH_CERT="$work/check.crt" \
     BENCH_KEY="$work/check.key" "$ours" check >"$work/check.out" 2>&1; then
  cat "$work/check.out" >&2
  die "rampart check rejected the bench config (above)"
fi
rm -f "$work/check.key" "$work/check.crt" "$config"

# --------------------------------------------------------------------- run --
log "peers.sh --peers \"$PEERS\" --metrics \"$METRICS\" $* (ours: $ours)"
rc=0
bash "$peers_sh" --peers "$PEERS" --metrics "$METRICS" --ours "$ours" "$@" || rc=$?

res=$(readlink -f "$base/results/latest" 2>/dev/null || true)
if [[ -n $res && -d $res ]]; then
  [[ -f $config ]] && cp "$config" "$res/rampart.yaml"
  if [[ -f $res/summary.md ]]; then
    log "summary: $res/summary.md (Rampart config used: $res/rampart.yaml)"
  else
    log "no summary in $res"
  fi
fi
if ((rc != 0)); then
  log "peers.sh failed (exit $rc); Rampart's output: $base/run/ours.out; tool logs: ${res:-$base/results/latest}/logs/"
fi
exit "$rc"
