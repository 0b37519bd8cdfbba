#!/usr/bin/env bash
# Per-request cost of single-record acks=all produce (issue 13), in counts that do not depend
# on the machine's load: instructions and allocations (callgrind), system calls (strace -c),
# and the broker's CPU-seconds per record (/proc/PID/stat).
#
# usage: bash benches/profile/produce.sh [BINARY] [OUT_DIR] [REQUESTS]
# Defaults: target/release/tidelog, /tmp/tidelog-profile, 3200 requests from 32 clients
# (ten times as many for the CPU figure). Each measurement starts after 320 warm-up requests.
set -eu
BIN=$(realpath "${1:-target/release/tidelog}")
OUT=${2:-/tmp/tidelog-profile}
N=${3:-3200}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -rf "$OUT"
mkdir -p "$OUT"
drive() { python3 "$HERE/drive.py" "$PORT" "$1" 32 "$2"; }
start() {
  rm -rf "$OUT/data"
  "$@" --listen "127.0.0.1:$PORT" --data-dir "$OUT/data" --log-level warn > "$OUT/broker.log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/v1/topics" && return
    sleep 0.2
  done
  echo "broker did not start" >&2
  exit 1
}
stop() { kill "$PID"; wait "$PID" || true; }

# 1. Instructions and allocations: callgrind, counters zeroed after the warm-up.
start valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$BIN"
drive 320 warm
callgrind_control -z "$PID" > /dev/null
drive "$N" measured
callgrind_control -d "$PID" > /dev/null
stop
dump=$(ls "$OUT"/callgrind.out.* | head -1)
ir=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
# Calls into malloc, calloc and realloc (callgrind names a function once, then by number).
mallocs=$(python3 - "$dump" <<'PY'
import re, sys
names, n, target = {}, 0, False
for line in open(sys.argv[1]):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
    if m and m.group(2):
        names[m.group(1)] = m.group(2)
    if line.startswith("cfn="):
        name = names.get(m.group(1)) if m else line[4:].strip()
        target = name in ("malloc", "calloc", "realloc")
    elif line.startswith("calls=") and target:
        n += int(line[6:].split()[0])
        target = False
print(n)
PY
)

# 2. System calls: strace -c on the broker (all threads) during the same run.
start "$BIN"
drive 320 warm
strace -c -f -p "$PID" -o "$OUT/strace.txt" &
SPID=$!
sleep 1
drive "$N" measured
kill -INT "$SPID"
wait "$SPID" || true
syscalls=$(awk '$NF == "total" {print $(NF-2)}' "$OUT/strace.txt")

# 3. CPU-seconds of the broker process (user + system) over ten times as many requests.
t0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
drive $((N * 10)) cpu
t1=$(awk '{print $14 + $15}' "/proc/$PID/stat")
stop

hz=$(getconf CLK_TCK)
python3 - "$N" "$ir" "$mallocs" "$syscalls" "$((t1 - t0))" "$hz" <<'PY'
import sys
n, ir, mallocs, syscalls, ticks, hz = map(int, sys.argv[1:])
print(f"instructions/request  {ir / n:,.0f}")
print(f"allocations/request   {mallocs / n:.1f}")
print(f"syscalls/request      {syscalls / n:.2f}")
print(f"records/CPU-second    {n * 10 / (ticks / hz):,.0f}  ({ticks / hz:.2f} s for {n * 10})")
PY
echo "callgrind: callgrind_annotate $dump | head -60; strace: $OUT/strace.txt"
