# Sourced by cpu_split.sh and fsync_gaps.sh: starts one server for the single-record load.
#
# start_single_server tidelog|redis
#   needs WORKDIR and TIDELOG_BIN; starts a fresh server (tidelog with one topic `t` of one
#   partition; redis-server with `--appendonly yes --appendfsync always --save ''`) on a free
#   127.0.0.1 port with its data in $WORKDIR/<kind>, waits until it answers, and sets PID,
#   PORT, PROTO and TARGET (the arguments benches/compare/client.py takes).
start_single_server() {
  local kind=$1 data
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  data="$WORKDIR/$kind"
  rm -rf "$data" && mkdir -p "$data"
  if [ "$kind" = redis ]; then
    redis-server --port "$PORT" --dir "$data" --appendonly yes --appendfsync always --save '' \
      --daemonize no > "$data.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do redis-cli -p "$PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
    PROTO=resp TARGET=s
  else
    "$TIDELOG_BIN" --listen "127.0.0.1:$PORT" --data-dir "$data" --log-level warn > "$data.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/v1/topics" && break; sleep 0.1; done
    curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
      "http://127.0.0.1:$PORT/v1/topics" -d '{"name":"t","partitions":1}'
    PROTO=http TARGET=t
  fi
}
