# benches/lib/pair.sh: sourced by benches/ab.sh and benches/ipr.sh, which run two Rampart builds
# in turn on ports 18445 and 18480 against the plaintext nginx backend (port 18080) whose
# config and certificate benches/bench.sh leaves under $PERFBENCH_DIR. Callers define die().
#
#   pair_setup NAME A B TOOL...   checks both builds, the backend's files, the TOOLs and the
#                                 ports; sets a and b (absolute), base, and work: a temporary
#                                 directory with storage/ in it, removed at exit together with
#                                 the processes whose pids are in backend_pid and rampart_pid
#   pair_listening TENTHS         waits up to TENTHS tenths of a second for Rampart (started by
#                                 the caller into rampart_pid, output in $work/rampart.out) to
#                                 listen on 18445; dies with the end of its output otherwise
#   pair_stop                     stops that Rampart

pair_setup() {
  local name=$1 bin tool port
  a=$(readlink -f "$2") b=$(readlink -f "$3")
  shift 3
  base=${PERFBENCH_DIR:-/tmp/perfbench}
  for bin in "$a" "$b"; do [[ -x $bin ]] || die "$bin is not an executable"; done
  [[ -f $base/conf/backend.conf && -f $base/pki/ecdsa.crt && -f $base/pki/ecdsa.key ]] ||
    die "no backend config or certificate under $base: run benches/bench.sh once first"
  for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool not found"; done
  for port in 18080 18445 18480; do
    ss -Hltn "sport = :$port" | grep -q . && die "port $port is in use (a benchmark still running?)"
  done
  work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-$name.XXXXXX")
  backend_pid='' rampart_pid=''
  trap pair_cleanup EXIT
  mkdir -m 0700 "$work/storage"
  # The backend config writes its pid, logs and temp files under $base/run.
  mkdir -p "$base/run/tmp"
}

pair_cleanup() {
  [[ -n $rampart_pid ]] && kill "$rampart_pid" 2>/dev/null
  [[ -n $backend_pid ]] && kill "$backend_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}

pair_listening() {
  local _
  for _ in $(seq "$1"); do
    ss -Hltn "sport = :18445" | grep -q . && return 0
    sleep 0.1
  done
  die "$rampart_pid did not start listening: $(tail -5 "$work/rampart.out")"
}

pair_stop() {
  kill "$rampart_pid"
  wait "$rampart_pid" 2>/dev/null || true
  rampart_pid=''
}
