#!/usr/bin/env bash
# Where a single-record durable write's CPU goes, tidelog beside Redis Streams (issue 13):
# the server's user and system CPU per request, and the load client's, in alternating runs.
#
# usage: bash benches/compare/cpu_split.sh [ROUNDS]   (default 3; each round one run of each)
# environment: SECS (measured seconds per run, default 5), TIDELOG_BIN (a broker binary
# instead of `cargo build --release`), WORK (where the data dirs go, default $TMPDIR or /tmp:
# a real disk, for the fsyncs to mean anything).
#
# Each run starts a fresh server (tidelog with one topic of one partition; redis-server with
# `--appendonly yes --appendfsync always --save ''`) on a free 127.0.0.1 port and drives it
# with benches/compare/client.py (32 clients, one 100-byte record per request: tidelog
# `acks=all`, Redis `XADD`) for SECS + 2 seconds. Over SECS seconds in the middle it reads
# the server's utime and stime from /proc/PID/stat; the client's CPU is its own report over
# the whole run. Printed per run: records/s, p50/p99 (ms), and microseconds per request of
# server user, server system, and client CPU. Needs redis-server and python3 (redis.sh says
# how to install them).
set -euo pipefail

ROUNDS=${1:-3}
SECS=${SECS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
for tool in redis-server redis-cli python3 curl; do
  command -v "$tool" > /dev/null || { echo "cpu_split.sh: '$tool' is not installed (see benches/compare/redis.sh)" >&2; exit 2; }
done
if [ -z "${TIDELOG_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin tidelog)
  TIDELOG_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tidelog"
fi
WORKDIR=$(mktemp -d -p "${WORK:-${TMPDIR:-/tmp}}" tidelog-cpu-split.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2> /dev/null || true; wait "$PID" 2> /dev/null || true; }
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
HZ=$(getconf CLK_TCK)

# shellcheck source=benches/compare/single_server.sh
. "$HERE/single_server.sh"

run() { # run tidelog|redis
  local kind=$1
  start_single_server "$kind"
  python3 "$HERE/client.py" "$PROTO" "$PORT" "$TARGET" --clients 32 --batch 1 \
    --requests 2000000 --seconds $((SECS + 2)) > "$WORKDIR/client.json" &
  local client=$!
  sleep 1
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$PID/stat")
  sleep "$SECS"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$PID/stat")
  wait "$client"
  kill "$PID"
  wait "$PID" 2> /dev/null || true
  PID=
  python3 - "$kind" "$WORKDIR/client.json" "$((u1 - u0))" "$((s1 - s0))" "$HZ" "$SECS" <<'PY'
import json, sys
kind, path, user, sys_, hz, secs = sys.argv[1:]
c = json.load(open(path))
n = c["records_per_s"] * float(secs)  # requests in the measured window
us = lambda ticks: int(ticks) / int(hz) * 1e6 / n
print(f"{kind:8s} {c['records_per_s']:9,.0f} records/s  p50 {c['p50_ms']:.2f}  p99 {c['p99_ms']:.2f} ms"
      f"  server user {us(user):5.1f}  system {us(sys_):5.1f}"
      f"  client {c['client_cpu_s'] * 1e6 / c['requests']:5.1f} us/request")
PY
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then run tidelog; run redis; else run redis; run tidelog; fi
done
