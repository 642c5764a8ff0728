#!/usr/bin/env bash
# Replication figures on this machine, release build, plaintext loopback:
#  1. catch-up: a leader holds N records of 256 B (default 4,194,304: 1 GiB
#     of values); its consumeStream rate is measured (`proglog bench
#     --consume-only`), then a fresh follower joins; the catch-up rate is
#     what the follower logs when its replica has caught up (records copied
#     over the seconds from its first batch; the time from the follower's
#     start, join included, is printed too), with the CPU each process
#     spent per record copied (the leader's over the catch-up, the
#     follower's over its life).
#  2. acks: three nodes; `proglog bench` against one of them with
#     --acks leader and --acks all, W=1 single records and batched.
# Every line printed is JSON. ONLY=catch-up stops after the first part.
#
#   scripts/bench-replication.sh [BINARY] [RECORDS]
set -euo pipefail
bin="${1:-target/release/proglog}"; records="${2:-4194304}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. "$(cd "$(dirname "$0")" && pwd)/node.sh"

gossip() { sed -n 's/^ready .*gossip=\([^ ]*\).*/\1/p' "$work/$1.out"; }
partition() { sed -n 's/^ready .*partition=\([^ ]*\).*/\1/p' "$work/$1.out"; }
# The next offset of partition $2 as node $1 lists it (0 when not held yet).
next_of() {
  "$bin" partitions --insecure --addr "$1" | awk -v p="$2" '$1 == p { print $4; found=1 } END { if (!found) print 0 }'
}

# The host's condition that moves the catch-up figure most: a VM whose
# balloon reports freed guest pages to the host (free page reporting) hands
# the follower's page cache memory the host must fault in again, page by
# page (BENCHMARKS.md, Replication). Printed so that a figure says what it
# was measured under.
reporting=/sys/module/page_reporting/parameters
python3 - "$reporting" <<'PY'
import json, os, sys
d = sys.argv[1]
read = lambda k: open(os.path.join(d, k)).read().strip() if os.path.exists(os.path.join(d, k)) else None
print(json.dumps({"case": "host", "free_page_reporting": os.path.isdir(d),
                  "page_reporting_order": read("page_reporting_order"),
                  "min_free_ms": read("min_free_ms")}))
PY

# 1. Catch-up.
start leader "$bin" --insecure; leader="$addr"; leader_pid="$pid"
"$bin" bench --insecure --addr "$leader" -n "$records" -s 256 -w 8 -b 1000 --no-consume \
  | sed 's/^{/{"case":"leader_load",/'
# Both the reference read and the catch-up start from a clean page cache
# (the load's dirty pages written back first): writeback running during one
# of them and not the other made their ratio swing by 2x.
sync
"$bin" bench --insecure --addr "$leader" -n "$records" -s 256 --consume-only --server-pid "$leader_pid" \
  | sed 's/^{/{"case":"leader_load",/'
p="$(partition leader)"
# CPU time of a process so far, in ns (every thread's, from schedstat).
cpu_ns() { local sum=0 ns; for f in /proc/"$1"/task/*/schedstat; do read -r ns _ < "$f" && sum=$((sum + ns)); done; echo "$sum"; }
leader_cpu0="$(cpu_ns "$leader_pid")"
t0="$(date +%s.%N)"
LOG_LEVEL=info start follower "$bin" --insecure --join "$(gossip leader)"; follower="$addr"; follower_pid="$pid"
# The follower logs once when its replica has caught up: the records it
# copied and the seconds from its first batch (join and connection excluded).
caught_up() { grep -m1 "replica caught up" "$work/follower.err" || true; }
while [ -z "$(caught_up)" ]; do sleep 0.05; done
t1="$(date +%s.%N)"
leader_cpu="$(( $(cpu_ns "$leader_pid") - leader_cpu0 ))"; follower_cpu="$(cpu_ns "$follower_pid")"
[ "$(next_of "$follower" "$p")" -ge "$records" ] || { echo "the follower has not copied every record" >&2; exit 1; }
python3 - "$t0" "$t1" "$(caught_up)" "$leader_cpu" "$follower_cpu" <<'PY'
import json, re, sys
t0, t1, line = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
leader_cpu, follower_cpu = int(sys.argv[4]), int(sys.argv[5])
field = lambda k: float(re.search(k + r"=([0-9.e+-]+)", line).group(1))
n, s = field("records"), field("seconds")
print(json.dumps({"case": "catch_up", "records": int(n),
                  "seconds_from_follower_start": round(t1 - t0, 3),
                  "seconds_copying": round(s, 3),
                  "records_per_s": round(n / s), "mb_per_s": round(n * 256 / s / 1e6, 1),
                  # CPU per record copied: the leader's over the catch-up,
                  # the follower's over its whole life (start and join too).
                  "leader_cpu_ns_per_record": round(leader_cpu / n),
                  "follower_cpu_ns_per_record": round(follower_cpu / n)}))
PY
kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()

[ "${ONLY:-}" = catch-up ] && exit 0

# 2. acks=leader vs acks=all on three nodes.
start a "$bin" --insecure; a="$addr"; a_pid="$pid"
start b "$bin" --insecure --join "$(gossip a)"
start c "$bin" --insecure --join "$(gossip a)"
sleep 1
for round in 1 2 3; do
  for acks in leader all; do
    "$bin" bench --insecure --addr "$a" --acks "$acks" -n 5000 -w 1 -b 1 --no-consume \
      | sed "s/^{/{\"case\":\"w1\",\"round\":$round,/"
    "$bin" bench --insecure --addr "$a" --acks "$acks" -n 1000000 -w 8 -b 1000 --no-consume \
      | sed "s/^{/{\"case\":\"batched\",\"round\":$round,/"
  done
done
kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()

# 3. Replication lag under a batched produce load: leader and one follower
#    (sync interval, acks leader);
#    the leader times each replica report against its own commit of the
#    newest append the report covers (histogram replication_lag_seconds,
#    buckets sqrt(2) apart: p50/p99 are interpolated within a bucket).
http() { sed -n 's/^ready .*http=\([^ ]*\).*/\1/p' "$work/$1.out"; }
start l "$bin" --insecure --replication-factor 2 --min-insync-replicas 1; l="$addr"
start f "$bin" --insecure --replication-factor 2 --min-insync-replicas 1 --join "$(gossip l)"
while [ "$(next_of "$addr" "$(partition l)")" = 0 ]; do
  "$bin" produce --insecure --addr "$l" <<< "warm-up" > /dev/null; sleep 0.2
done
f="$addr"
# One batch in flight: a load the three processes (client, leader,
# follower) sustain on two cores. With -w 8 the follower falls behind for
# the whole run and the figure is its backlog, not its lag.
for load in "-w 1 -b 1000 -n 1000000" "-w 1 -b 100 -n 200000"; do
  # Start with the follower caught up.
  while [ "$(next_of "$f" "$(partition l)")" != "$(next_of "$l" "$(partition l)")" ]; do sleep 0.1; done
  before="$(curl -s "http://$(http l)/metrics")"
  # shellcheck disable=SC2086
  "$bin" bench --insecure --addr "$l" $load --no-consume | sed "s/^{/{\"case\":\"lag_load\",/"
  sleep 0.5
  after="$(curl -s "http://$(http l)/metrics")"
  python3 - "$load" <(echo "$before") <(echo "$after") <<'PY'
import json, re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.search(r'replication_lag_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
        if m:
            out[float(m.group(1))] = int(m.group(2))
    return out
b0, b1 = buckets(sys.argv[2]), buckets(sys.argv[3])
bounds = sorted(b1)
counts = [b1[b] - b0.get(b, 0) for b in bounds]
total = counts[-1]
def pct(p):
    want, lo = p * total, 0.0
    for i, b in enumerate(bounds):
        if counts[i] >= want:
            below = counts[i - 1] if i else 0
            frac = (want - below) / max(counts[i] - below, 1)
            return (lo + (b - lo) * frac) * 1e6 if b != float("inf") else lo * 1e6
        lo = b
print(json.dumps({"case": "replication_lag", "load": sys.argv[1], "reports": total,
                  "p50_us": round(pct(0.5)), "p99_us": round(pct(0.99))}))
PY
done
