#!/usr/bin/env bash
# The fault suite: a 3-node cluster from the image on a private Docker
# network made here, a checker (`proglog verify`: acks=all produces from
# several writers, a follower per partition) in a container on the same
# network, and faults on a random schedule from a printed seed:
#   partition  docker network disconnect of one node, then reconnect
#   kill       docker kill -s KILL of one node, then start it again
#   pause      docker pause of one node (gossip suspects it), then unpause
#   rolling    a graceful restart of every node in turn
# After each schedule's faults are healed the checker verifies: every
# acknowledged record is on every holder, holders are identical record for
# record, offsets are contiguous, nothing is duplicated except values of
# produces with an unknown outcome (counted).
#
#   scripts/faults/run.sh [--schedules N] [--duration SECS] [--seed S]
#                         [--image TAG] [--build] [--logs DIR]
#
# One schedule is one checker run of --duration seconds with 1-3 faults in
# it; the cluster lives across schedules. Prints a line per fault (with the
# time the cluster took to be ready again), a verdict per schedule and a
# summary; keeps every container's log in --logs when a schedule fails.
# Removes its containers, network and volumes however it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

schedules=3 duration=30 seed=${FAULTS_SEED:-$(( $(date +%s) % 100000 ))}
image=proglog:latest build=0 logs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --schedules) schedules=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --build) build=1; shift ;;
        --logs) logs=$2; shift 2 ;;
        *) echo "faults: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$duration" -ge 20 ] || { echo "faults: --duration must be at least 20 s" >&2; exit 2; }

if ! docker info >/dev/null 2>&1; then
    echo "faults: no Docker engine reachable: skipped" >&2
    exit 77
fi
if [ "$build" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
    scripts/build-image.sh "$image" >/dev/null
fi

id=pf$$
# Leftovers of runs that were killed outright (no trap runs on SIGKILL).
for stale in $(docker ps -a --filter label=proglog-faults --format '{{.Label "proglog-faults"}}' | sort -u); do
    if ! kill -0 "${stale#pf}" 2>/dev/null; then
        docker ps -aq --filter "label=proglog-faults=$stale" | xargs -r docker rm -f >/dev/null 2>&1 || true
        docker network rm "$stale-net" >/dev/null 2>&1 || true
        for n in node1 node2 node3; do docker volume rm "$stale-$n" >/dev/null 2>&1 || true; done
    fi
done
logs=${logs:-target/faults/$id}
work=$(mktemp -d)
net=$id-net
nodes=(node1 node2 node3)
RANDOM=$seed
echo "faults: seed $seed ($schedules schedules of ${duration}s; rerun with --seed $seed)"

cleanup() {
    local status=$?
    docker ps -aq --filter "label=proglog-faults=$id" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    for n in "${nodes[@]}"; do docker volume rm "$id-$n" >/dev/null 2>&1 || true; done
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A /24 nobody else uses.
prefix=""
for _ in 1 2 3 4 5 6 7 8; do
    try="10.$((RANDOM % 200 + 32)).$((RANDOM % 250)).0"
    if docker network create --subnet "${try}/24" --label "proglog-faults=$id" "$net" >/dev/null 2>&1; then
        prefix=${try%.0}; break
    fi
done
[ -n "$prefix" ] || { echo "faults: cannot create a network" >&2; exit 1; }
# RANDOM is reseeded so the schedule depends on the seed alone.
RANDOM=$seed

PROGLOG_IMAGE=$image deploy/make-certs.sh "$work/certs" "$prefix" >/dev/null
chmod 0644 "$work/certs"/*.key   # the checker runs as uid 65532 too

# Seconds since a `date +%s%N` stamp, to a tenth.
elapsed() {
    local tenths=$(( ($(date +%s%N) - $1) / 100000000 ))
    printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

ip_of() { echo "$prefix.1${1#node}"; }

start_node() {
    local n=$1
    docker run -d --name "$id-$n" --hostname "$n" --label "proglog-faults=$id" \
        --network "$net" --ip "$(ip_of "$n")" --network-alias "$n" \
        -v "$id-$n:/var/lib/proglog" -v "$work/certs:/certs:ro" \
        -e PROGLOG_NODE_NAME="$n" -e PROGLOG_ADVERTISE_RPC_ADDR="$(ip_of "$n"):8400" \
        -e PROGLOG_JOIN=node1:8401,node2:8401,node3:8401 \
        -e PROGLOG_TLS_CA=/certs/ca.pem -e PROGLOG_TLS_CERT="/certs/$n.pem" \
        -e PROGLOG_TLS_KEY="/certs/$n.key" -e PROGLOG_CLUSTER_KEY_FILE=/certs/cluster.key \
        "$image" >/dev/null
}

# Ready (/readyz) and seeing all three nodes alive.
ready() {
    docker exec "$id-$1" /usr/local/bin/proglog health >/dev/null 2>&1 &&
        [ "$(docker exec "$id-$1" /usr/local/bin/proglog servers --addr 127.0.0.1:8400 \
            --tls-dir /certs 2>/dev/null | awk '$3 == "true"' | wc -l)" = 3 ]
}

# Waits until every node is ready and sees every node alive; prints the
# seconds it took.
wait_all_ready() {
    local started=$(date +%s%N) n
    for _ in $(seq 600); do
        local all=1
        for n in "${nodes[@]}"; do ready "$n" || { all=0; break; }; done
        if [ $all = 1 ]; then
            elapsed "$started"
            return 0
        fi
        sleep 0.2
    done
    echo "faults: the cluster was not ready within 120 s" >&2
    return 1
}

save_logs() {
    mkdir -p "$logs"
    for c in $(docker ps -aq --filter "label=proglog-faults=$id"); do
        local name=$(docker inspect -f '{{.Name}}' "$c" | tr -d /)
        docker logs "$c" > "$logs/$name.log" 2>&1 || true
    done
    echo "faults: container logs kept in $logs" >&2
}

for n in "${nodes[@]}"; do start_node "$n"; done
echo "faults: cluster up on $prefix.0/24, ready in $(wait_all_ready)s"

results=$work/results.jsonl
recoveries=$work/recoveries
: > "$results"; : > "$recoveries"
failed=0
for s in $(seq "$schedules"); do
    checker=$id-checker-$s
    docker run -d --name "$checker" --label "proglog-faults=$id" --network "$net" \
        -v "$work/certs:/certs:ro" "$image" \
        verify --addr node1:8400,node2:8400,node3:8400 --tls-dir /certs \
        --duration "$duration" --run "s$s" >/dev/null
    began=$(date +%s)
    faults=$((1 + RANDOM % 3))
    for f in $(seq "$faults"); do
        kind=$(( RANDOM % 4 )); n=${nodes[$((RANDOM % 3))]}
        hold=$((2 + RANDOM % 5)); gap=$((1 + RANDOM % 3))
        # Faults end (healed, ready) before the checker stops producing.
        budget=$((duration - 6 - ($(date +%s) - began)))
        need=$((gap + hold + 4)); [ $kind = 3 ] && need=$((gap + 16))
        [ "$need" -le "$budget" ] || break
        sleep "$gap"
        case $kind in
            0) what="partition $n ${hold}s"
               docker network disconnect "$net" "$id-$n"; sleep "$hold"
               docker network connect --ip "$(ip_of "$n")" --alias "$n" "$net" "$id-$n" ;;
            1) what="kill $n, down ${hold}s"
               docker kill -s KILL "$id-$n" >/dev/null; sleep "$hold"
               docker start "$id-$n" >/dev/null ;;
            2) what="pause $n ${hold}s"
               docker pause "$id-$n" >/dev/null; sleep "$hold"
               docker unpause "$id-$n" >/dev/null ;;
            3) rolled=$(date +%s%N)
               for r in "${nodes[@]}"; do
                   docker restart -t 15 "$id-$r" >/dev/null
                   wait_all_ready >/dev/null
               done
               what="rolling restart (all three in $(elapsed "$rolled")s)" ;;
        esac
        took=$(wait_all_ready)
        echo "${what%% *} $took" >> "$recoveries"
        echo "faults: schedule $s fault $f: $what; ready again in ${took}s"
    done
    status=$(docker wait "$checker")
    docker logs "$checker" 2>/dev/null | grep '^{' | tail -1 >> "$results" || true
    verdict=$(docker logs "$checker" 2>/dev/null | grep '^verify:' | tail -1)
    echo "faults: schedule $s: ${verdict:-checker printed no verdict (exit $status)}"
    if [ "$status" != 0 ]; then
        failed=1
        docker logs "$checker" 2>&1 | grep -i 'violation\|error' | head -20 >&2 || true
        save_logs
        break
    fi
    docker rm "$checker" >/dev/null
done

python3 - "$results" "$recoveries" "$seed" "$failed" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pairs = [l.split() for l in open(sys.argv[2]) if l.strip()]
rec = [float(p[1]) for p in pairs]
kinds = {}
for kind, took in pairs:
    kinds.setdefault(kind, []).append(float(took))
tot = lambda k: sum(r.get(k, 0) for r in rows)
verdict = "FAIL" if sys.argv[4] == "1" else "OK"
print(f"faults: {verdict} seed={sys.argv[3]} schedules={len(rows)} faults={len(rec)} "
      f"acknowledged={tot('acknowledged')} lost={tot('lost')} duplicates={tot('duplicates')} "
      f"indeterminate={tot('indeterminate')} (appended {tot('indeterminate_appended')}) "
      f"divergent={tot('divergent')} gaps={tot('gaps')} "
      f"max_lag={max([r.get('max_replica_lag', 0) for r in rows] or [0])} "
      + (f"recovery median={statistics.median(rec):.1f}s max={max(rec):.1f}s" if rec else "recovery n/a"))
for kind, v in sorted(kinds.items()):
    print(f"faults: {kind}: {len(v)} faults, ready again in median {statistics.median(v):.1f}s, max {max(v):.1f}s")
PY
exit $failed
