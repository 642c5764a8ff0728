#!/usr/bin/env bash
# A/B of two proglog builds on this machine: starts one plaintext node per
# binary (fresh data directories, default settings) and runs the same
# `proglog bench` matrix against them alternately for ROUNDS rounds, printing
# every JSON line tagged with the build. For before/after figures of a change.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   (default 3)
set -euo pipefail
old="$1"; new="$2"; rounds="${3:-3}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

. "$(cd "$(dirname "$0")" && pwd)/node.sh"

start old "$old" --insecure; old_addr="$addr"; old_pid="$pid"
start new "$new" --insecure; new_addr="$addr"; new_pid="$pid"
for round in $(seq "$rounds"); do
  order=(old new); [ $((round % 2)) -eq 0 ] && order=(new old)
  for build in "${order[@]}"; do
    if [ "$build" = old ]; then a=(--insecure --addr "$old_addr" --server-pid "$old_pid"); bin="$old"
    else a=(--insecure --addr "$new_addr" --server-pid "$new_pid"); bin="$new"; fi
    tag() { sed "s/^{/{\"build\":\"$build\",\"round\":$round,\"case\":\"$1\",/"; }
    "$bin" bench "${a[@]}" -n 20000 -w 1 -b 1 --no-consume | tag w1
    "$bin" bench "${a[@]}" -n 200000 -w 64 -b 1 --no-consume | tag w64
    "$bin" bench "${a[@]}" -n 2000000 -w 8 -b 1000 | tag batched
  done
done
