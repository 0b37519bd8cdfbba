#!/usr/bin/env bash
# tidelog beside Redis Streams, measured in one run on this machine (issue 13).
#
# usage: bash benches/compare/redis.sh [ROUNDS]        (default 3 rounds)
# environment: SECS (measured seconds per run, default 5), TIDELOG_BIN (a broker binary
# instead of `cargo build --release`), WORK (where the data dirs go, default $TMPDIR or /tmp:
# it must be a real disk for the fsyncs to mean anything).
#
# Each round starts a fresh release broker (`tidelog serve`, topic of one partition per
# workload) and a fresh redis-server (`--appendonly yes --appendfsync always --save ''`: an
# XADD is written and fsynced before its reply), both on free 127.0.0.1 ports with data
# directories in a temp dir, and runs each workload on both, alternating which goes first
# (odd rounds tidelog first, even rounds Redis first):
#   single:  32 clients, one 100-byte record per request (tidelog: POST
#            /v1/topics/T/records?acks=all, keep-alive; Redis: XADD s * v <100 bytes>)
#   batched: 8 clients, 1,000 records of 100 bytes per request (tidelog: one POST of 1,000
#            records; Redis: a pipeline of 1,000 XADDs per round trip)
# Both servers are driven by the same client, benches/compare/client.py (raw sockets, epoll,
# two processes), after a one-second warm-up; each run is bounded by SECS seconds and a
# request count. Redis is then also driven by redis-benchmark (C, same connection count,
# `-P 1000` for batched) for reference: it shows how much the Python client holds Redis back.
# The ratios use only the same-client rows.
#
# Per run: records/s, p50/p99 latency of a request, the server process's CPU-seconds (utime +
# stime from /proc/PID/stat, every thread, before and after, plus its children's: Redis forks
# to rewrite its AOF once it has grown past 64 MB) and so records per server
# CPU-second. At the end: medians per workload and the tidelog/Redis ratio of each round with
# their median. The rows are kept in $WORK/.../results.tsv (path printed).
set -euo pipefail

ROUNDS=${1:-3}
SECS=${SECS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLIENT="$HERE/client.py"
VALUE=$(printf 'v%.0s' $(seq 100))
# Bounds on the count of requests (the time bound, SECS, normally ends a run first).
SINGLE_MAX=2000000
BATCHED_MAX=20000
RB_SINGLE_N=200000
RB_BATCHED_N=1500000

missing=0
need() {
  if ! command -v "$1" > /dev/null; then
    echo "redis.sh: '$1' is not installed; $2" >&2
    missing=1
  fi
}
need redis-server "install it with: apt-get install -y redis-server (Debian; then 'systemctl disable --now redis-server' if the package started its own)"
need redis-benchmark "install it with: apt-get install -y redis-tools (Debian; redis-server pulls it in)"
need redis-cli "install it with: apt-get install -y redis-tools"
need python3 "install it with: apt-get install -y python3"
need curl "install it with: apt-get install -y curl"
if [ -z "${TIDELOG_BIN:-}" ]; then
  need cargo "install Rust from rustup.rs, or set TIDELOG_BIN to a built broker"
fi
[ "$missing" = 0 ] || exit 2

if [ -z "${TIDELOG_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin tidelog)
  TIDELOG_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tidelog"
fi
[ -x "$TIDELOG_BIN" ] || { echo "redis.sh: no broker at $TIDELOG_BIN (cargo build --release)" >&2; exit 2; }

WORKDIR=$(mktemp -d -p "${WORK:-${TMPDIR:-/tmp}}" tidelog-vs-redis.XXXXXX)
RESULTS="$WORKDIR/results.tsv"
TPID=
RPID=
cleanup() {
  for pid in $TPID $RPID; do kill "$pid" 2> /dev/null || true; done
  for pid in $TPID $RPID; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$WORKDIR"/tidelog-* "$WORKDIR"/redis-*
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# CPU ticks of a server: its own threads (utime + stime), its reaped children (cutime +
# cstime) and its live children (Redis forks one to rewrite its AOF once it has grown).
cpu_ticks() {
  local t c
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
  for c in $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2> /dev/null || echo 0)))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

start_servers() {
  local r=$1
  TPORT=$(free_port)
  mkdir -p "$WORKDIR/tidelog-$r"
  "$TIDELOG_BIN" serve --listen "127.0.0.1:$TPORT" --data-dir "$WORKDIR/tidelog-$r/data" \
    --log-level warn > "$WORKDIR/tidelog-$r/broker.log" 2>&1 &
  TPID=$!
  RPORT=$(free_port)
  mkdir -p "$WORKDIR/redis-$r"
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORKDIR/redis-$r" \
    --appendonly yes --appendfsync always --save '' --daemonize no \
    --logfile "$WORKDIR/redis-$r/redis.log" &
  RPID=$!
  for _ in $(seq 300); do
    if curl -sf -o /dev/null "http://127.0.0.1:$TPORT/v1/topics" &&
      [ "$(redis-cli -p "$RPORT" ping 2> /dev/null)" = PONG ]; then
      return
    fi
    sleep 0.1
  done
  echo "redis.sh: a server did not start (logs in $WORKDIR)" >&2
  exit 1
}

stop_servers() {
  echo "  Redis AOF rewrites this round (forked, their CPU counted as Redis's):" \
    "$(grep -c 'Background append only file rewriting started' "$WORKDIR"/redis-*/redis.log || true)"
  kill "$TPID" "$RPID"
  wait "$TPID" || true
  wait "$RPID" || true
  TPID=
  RPID=
  rm -rf "$WORKDIR"/tidelog-* "$WORKDIR"/redis-*
}

# row ROUND WORKLOAD SERVER CLIENT RECORDS/S REQUESTS/S P50 P99 CPU_TICKS RECORDS
row() {
  python3 - "$@" "$HZ" >> "$RESULTS" <<'PY'
import sys
rnd, w, server, client, rps, qps, p50, p99, ticks, records, hz = sys.argv[1:]
cpu = int(ticks) / int(hz)
per_cpu = f"{int(records) / cpu:.0f}" if cpu > 0 else "-"
print("\t".join([rnd, w, server, client, rps, qps, p50, p99, f"{cpu:.2f}", per_cpu]))
PY
  tail -1 "$RESULTS" | awk -F'\t' '{printf "  %-8s %-8s %-16s %12.0f records/s  p50 %s ms  p99 %s ms  server CPU %s s  %s records/CPU-s\n", $2, $3, "(" $4 ")", $5, $7, $8, $9, $10}'
}

# run ROUND WORKLOAD SERVER: the same client against tidelog (http) or Redis (resp).
run() {
  local r=$1 w=$2 s=$3 proto port pid target clients batch max
  if [ "$w" = single ]; then clients=32 batch=1 max=$SINGLE_MAX; else clients=8 batch=1000 max=$BATCHED_MAX; fi
  target="$w-r$r"
  if [ "$s" = tidelog ]; then
    proto=http port=$TPORT pid=$TPID
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/topics" \
      -H 'content-type: application/json' -d "{\"name\":\"$target\",\"partitions\":1}")
    [ "$code" = 201 ] || { echo "redis.sh: creating topic $target: HTTP $code" >&2; exit 1; }
  else
    proto=resp port=$RPORT pid=$RPID
  fi
  python3 "$CLIENT" "$proto" "$port" "$target" --clients "$clients" --batch "$batch" \
    --requests "$max" --seconds 1 > /dev/null
  local t0 t1 out
  t0=$(cpu_ticks "$pid")
  out=$(python3 "$CLIENT" "$proto" "$port" "$target" --clients "$clients" --batch "$batch" \
    --requests "$max" --seconds "$SECS")
  t1=$(cpu_ticks "$pid")
  echo "$out" > "$WORKDIR/last.json"
  read -r rps qps p50 p99 records errors < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["records_per_s"], d["requests_per_s"], d["p50_ms"], d["p99_ms"], d["records"], d["errors"])' "$WORKDIR/last.json")
  [ "$errors" = 0 ] || { echo "redis.sh: $s $w: $errors errors ($out)" >&2; exit 1; }
  row "$r" "$w" "$s" client.py "$rps" "$qps" "$p50" "$p99" $((t1 - t0)) "$records"
}

# bench ROUND WORKLOAD: redis-benchmark against Redis, for reference.
bench() {
  local r=$1 w=$2 args n t0 t1 csv
  if [ "$w" = single ]; then args=(-c 32) n=$RB_SINGLE_N; else args=(-c 8 -P 1000) n=$RB_BATCHED_N; fi
  t0=$(cpu_ticks "$RPID")
  csv=$(timeout $((SECS * 6 + 30)) redis-benchmark -h 127.0.0.1 -p "$RPORT" "${args[@]}" -n "$n" \
    --csv XADD "rb-$w-r$r" '*' v "$VALUE" | tail -1)
  t1=$(cpu_ticks "$RPID")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  IFS=, read -r _ rps _ _ p50 _ p99 _ <<< "${csv//\"/}"
  # With -P 1000 a latency is one command's, measured over its pipeline's round trip.
  local qps=$rps
  [ "$w" = single ] || qps=-
  row "$r" "$w" redis redis-benchmark "$rps" "$qps" "$p50" "$p99" $((t1 - t0)) "$n"
}

printf 'round\tworkload\tserver\tclient\trecords_per_s\trequests_per_s\tp50_ms\tp99_ms\tserver_cpu_s\trecords_per_cpu_s\n' > "$RESULTS"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2> /dev/null | grep -q . && echo " (with uncommitted changes)" || true)
echo "tidelog beside Redis Streams: $ROUNDS rounds of ${SECS} s per run; commit $commit$dirty"
echo "broker: $TIDELOG_BIN; $(redis-server --version | cut -d' ' -f1-3); data in $WORKDIR"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="tidelog redis"; else order="redis tidelog"; fi
  echo "round $r ($order first), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  start_servers "$r"
  for w in single batched; do
    for s in $order; do run "$r" "$w" "$s"; done
    bench "$r" "$w"
  done
  stop_servers
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 "$CLIENT" summary "$RESULTS"
echo
echo "rows: $RESULTS"
trap - EXIT
cleanup
