# Sourced by the benchmark scripts: `start NAME BINARY [serve args...]`
# starts a node on free loopback ports with its data in $work/NAME, waits for
# its ready line, and sets $addr and $pid (appended to the $pids array).
# LOG_LEVEL (default warn) sets the node's --log-level.
start() {
  local name="$1" bin="$2"; shift 2
  "$bin" serve --node-name "$name" --data-dir "$work/$name" --rpc-addr 127.0.0.1:0 --gossip-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --log-level "${LOG_LEVEL:-warn}" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pid="$!"; pids+=("$pid")
  for _ in $(seq 100); do
    if grep -q '^ready ' "$work/$name.out" 2>/dev/null; then
      addr="$(sed -n 's/^ready rpc=\([^ ]*\).*/\1/p' "$work/$name.out")"; return
    fi
    sleep 0.1
  done
  echo "node $name did not start" >&2; cat "$work/$name.err" >&2; exit 1
}
