#!/usr/bin/env bash
# How busy the disk is kept, tidelog beside Redis Streams (issue 13): under the single-record
# durable load, how long each fdatasync takes and how long the server leaves the disk idle
# between one and the next, in alternating runs.
#
# usage: bash benches/compare/fsync_gaps.sh [ROUNDS]   (default 2; each round one run of each)
# environment: SECS (measured seconds per run, default 2), TIDELOG_BIN (a broker binary, or a
# wrapper script that execs one, instead of `cargo build --release`), WORK (where the data
# dirs go, default $TMPDIR or /tmp: a real disk, for the fsyncs to mean anything).
#
# Each run starts a fresh server (tidelog with one topic of one partition; redis-server with
# `--appendonly yes --appendfsync always --save ''`) on a free 127.0.0.1 port and drives it
# with benches/compare/client.py (32 clients, one 100-byte record per request) for SECS + 3
# seconds. Over SECS seconds in the middle, `perf record` takes the server's fdatasync entry
# and exit tracepoints (no samples, no stacks). Printed per run: records/s and p99 of the
# whole run, the fdatasyncs per second, their duration (p50, p90), the idle gap from one's
# end to the next one's start (p50, p90), and the share of the time the disk was syncing.
# With one fsync in flight at a time, a closed loop of clients is served at about
# (records per round) / (sync + gap): what a server does between two syncs sets its rate as
# much as the disk does. Needs perf (tracepoints: root, or kernel.perf_event_paranoid <= -1),
# redis-server and python3 (redis.sh says how to install them).
set -euo pipefail

ROUNDS=${1:-2}
SECS=${SECS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
for tool in perf redis-server redis-cli python3 curl; do
  command -v "$tool" > /dev/null || { echo "fsync_gaps.sh: '$tool' is not installed" >&2; exit 2; }
done
if [ -z "${TIDELOG_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet --bin tidelog)
  TIDELOG_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tidelog"
fi
WORKDIR=$(mktemp -d -p "${WORK:-${TMPDIR:-/tmp}}" tidelog-fsync-gaps.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2> /dev/null || true; wait "$PID" 2> /dev/null || true; }
  rm -rf "$WORKDIR"
}
trap cleanup EXIT

# shellcheck source=benches/compare/single_server.sh
. "$HERE/single_server.sh"

run() { # run tidelog|redis
  local kind=$1
  start_single_server "$kind"
  python3 "$HERE/client.py" "$PROTO" "$PORT" "$TARGET" --clients 32 --batch 1 \
    --requests 2000000 --seconds $((SECS + 3)) > "$WORKDIR/client.json" &
  local client=$!
  sleep 1.5
  perf record -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync -p "$PID" \
    -o "$WORKDIR/perf.data" -- sleep "$SECS" > /dev/null 2>&1
  wait "$client"
  kill "$PID"
  wait "$PID" 2> /dev/null || true
  PID=
  perf script -i "$WORKDIR/perf.data" -F tid,time,event > "$WORKDIR/syncs.txt" 2> /dev/null
  python3 - "$kind" "$WORKDIR/client.json" "$WORKDIR/syncs.txt" <<'PY'
import json, sys
kind, path, syncs = sys.argv[1:]
c = json.load(open(path))
started, durations, gaps, last_end, first, end = {}, [], [], None, None, None
for line in open(syncs):
    tid, at, event = line.split()[:3]
    at = float(at.rstrip(":"))
    first = at if first is None else first
    end = at
    if "enter" in event:
        started[tid] = at
        if last_end is not None and not started.keys() - {tid}:
            gaps.append(at - last_end)
    elif tid in started:
        durations.append(at - started.pop(tid))
        last_end = at
if len(durations) < 10:
    sys.exit(f"{kind}: only {len(durations)} fdatasyncs seen")
q = lambda v, f: sorted(v)[int(len(v) * f)] * 1e6
span = end - first
print(f"{kind:8s} {c['records_per_s']:9,.0f} records/s  p99 {c['p99_ms']:.2f} ms  "
      f"{len(durations) / span:6,.0f} syncs/s  sync p50 {q(durations, .5):4.0f} p90 {q(durations, .9):4.0f} us  "
      f"gap p50 {q(gaps, .5):4.0f} p90 {q(gaps, .9):4.0f} us  disk syncing {sum(durations) / span:.0%}")
PY
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then run tidelog; run redis; else run redis; run tidelog; fi
done
