#!/usr/bin/env bash
# Two broker binaries against each other on single-record acks=all produce (issue 13): the
# A/B the README quotes for a change to the produce path.
#
# usage: bash benches/compare/ab.sh BIN_A BIN_B [ROUNDS]      (default 3 rounds)
# environment: SECS (measured seconds per run, default 5), WORK (where the data dir goes,
# default $TMPDIR or /tmp: it must be a real disk for the fsyncs to mean anything).
#
# Each round runs both binaries, alternating which goes first (odd rounds A first). A run
# starts a fresh broker on a free 127.0.0.1 port, creates a topic of one partition, warms up
# for a second, then drives it for SECS seconds with benches/compare/client.py: 32 keep-alive
# clients, one 100-byte record per request, POST /v1/topics/T/records?acks=all. A BIN may be
# a wrapper script that execs the broker (to set its environment, say TOKIO_WORKER_THREADS).
#
# Per run: records/s, p99 latency, the broker's CPU per request (utime + stime of
# /proc/PID/stat), records per server CPU-second, and context switches per request (voluntary
# and involuntary, summed over /proc/PID/task/*/status). Compare B with A within a round: the
# machine's speed moves between rounds.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash benches/compare/ab.sh BIN_A BIN_B [ROUNDS]" >&2
  exit 2
fi
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${3:-3}
SECS=${SECS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
CLIENT="$HERE/client.py"
DATA=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/tidelog-ab.XXXXXX")
trap 'rm -rf "$DATA"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
}
cpu_ticks() {
  awk '{print $14 + $15}' /proc/"$1"/stat
}

run() {
  local bin=$1 tag=$2 port pid
  port=$(free_port)
  rm -rf "$DATA/data"
  "$bin" --listen "127.0.0.1:$port" --data-dir "$DATA/data" --log-level warn >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/v1/topics" && break
    sleep 0.1
  done
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/v1/topics" \
    -H 'content-type: application/json' -d '{"name":"s","partitions":1}'
  python3 "$CLIENT" http "$port" s --clients 32 --batch 1 --requests 20000 --seconds 1 >/dev/null
  local t0 cs0 t1 cs1 out
  t0=$(cpu_ticks "$pid")
  cs0=$(switches "$pid")
  out=$(python3 "$CLIENT" http "$port" s --clients 32 --batch 1 --requests 2000000 --seconds "$SECS")
  t1=$(cpu_ticks "$pid")
  cs1=$(switches "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$tag" "$out" $((t1 - t0)) $((cs1 - cs0)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
tag, out = sys.argv[1], json.loads(sys.argv[2])
ticks, switches, hz = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpu = max(ticks, 1) / hz
n = max(out["records"], 1)
print(f"{tag}  {out['records_per_s']:>9,.0f} records/s  p99 {out['p99_ms']:5.2f} ms  "
      f"server CPU/request {cpu / n * 1e6:5.1f} us  records/CPU-s {n / cpu:>7,.0f}  "
      f"switches/request {switches / n:.2f}")
PY
}

for r in $(seq "$ROUNDS"); do
  echo "round $r"
  if [ $((r % 2)) = 1 ]; then run "$A" A; run "$B" B; else run "$B" B; run "$A" A; fi
done
