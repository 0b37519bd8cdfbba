#!/usr/bin/env bash
# Three tidelog brokers on this machine, one cluster: the section "Three brokers on one
# machine" of README.md.
#
#   deploy/three-brokers.sh [DATA_ROOT]
#
# Starts brokers 1, 2 and 3 on 127.0.0.1:9001, :9002 and :9003 (set TIDELOG_PORTS="P1 P2 P3"
# for others), with data in DATA_ROOT/d1, d2, d3 (default ./cluster-data) and logs in
# DATA_ROOT/d1.log, ...; waits until each answers /readyz, prints their addresses, and runs
# until Ctrl-C or SIGTERM, which stops all three cleanly. The binary is TIDELOG_BIN, else
# target/release/tidelog, else `tidelog` on the PATH (`cargo build --release` first).
set -euo pipefail

root=${1:-./cluster-data}
read -r -a ports <<< "${TIDELOG_PORTS:-9001 9002 9003}"
if [ "${#ports[@]}" -ne 3 ]; then
    echo "TIDELOG_PORTS must name three ports, got '${TIDELOG_PORTS}'" >&2
    exit 2
fi
bin=${TIDELOG_BIN:-}
if [ -z "$bin" ]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    if [ -x "$here/target/release/tidelog" ]; then
        bin="$here/target/release/tidelog"
    else
        bin=tidelog
    fi
fi
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"

pids=()
stop() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop EXIT
trap 'exit 0' INT TERM

mkdir -p "$root"
for id in 1 2 3; do
    port=${ports[$((id - 1))]}
    "$bin" serve --node-id "$id" --listen "127.0.0.1:$port" --data-dir "$root/d$id" \
        --peers "$peers" > "$root/d$id.log" 2>&1 &
    pids+=("$!")
done

# Ready once registered with the controller and caught up with the metadata.
for id in 1 2 3; do
    url="http://127.0.0.1:${ports[$((id - 1))]}"
    for _ in $(seq 1 600); do
        if curl -sf "$url/readyz" > /dev/null; then
            break
        fi
        if ! kill -0 "${pids[$((id - 1))]}" 2>/dev/null; then
            echo "broker $id stopped; its log, $root/d$id.log, says:" >&2
            tail -n 20 "$root/d$id.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    curl -sf "$url/readyz" > /dev/null || { echo "broker $id is not ready after 60 s" >&2; exit 1; }
done
echo "three brokers ready: http://127.0.0.1:${ports[0]} http://127.0.0.1:${ports[1]} http://127.0.0.1:${ports[2]}"

# Runs until a broker stops (or Ctrl-C / SIGTERM stops them all).
wait -n "${pids[@]}"
echo "a broker stopped; stopping the others" >&2
exit 1
