#!/usr/bin/env bash
# A/B of two proglog builds on this machine: for each case, a fresh
# plaintext node per binary (new data directory, default settings) takes
# the same `proglog bench` run, the builds alternating first from round to
# round; prints every JSON line tagged with build, round and case. For
# before/after figures of a change. A fresh node per measurement matters:
# a node that kept the data of earlier runs slows down as it grows (seen
# here on tmpfs), which skews whichever build runs later.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   (default 3)
set -euo pipefail
old="$1"; new="$2"; rounds="${3:-3}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

. "$(cd "$(dirname "$0")" && pwd)/node.sh"

# measure BUILD BINARY ROUND CASE bench-args...
measure() {
  local build="$1" bin="$2" round="$3" case="$4"; shift 4
  work="$(mktemp -d)"
  start "$build" "$bin" --insecure
  "$bin" bench --insecure --addr "$addr" --server-pid "$pid" "$@" \
    | sed "s/^{/{\"build\":\"$build\",\"round\":$round,\"case\":\"$case\",/"
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$work"
}

for round in $(seq "$rounds"); do
  order=(old new); [ $((round % 2)) -eq 0 ] && order=(new old)
  for build in "${order[@]}"; do
    if [ "$build" = old ]; then bin="$old"; else bin="$new"; fi
    measure "$build" "$bin" "$round" w1 -n 20000 -w 1 -b 1 --no-consume
    measure "$build" "$bin" "$round" w64 -n 200000 -w 64 -b 1 --no-consume
    measure "$build" "$bin" "$round" batched -n 1000000 -w 8 -b 1000
  done
done
