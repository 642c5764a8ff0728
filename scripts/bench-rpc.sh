#!/usr/bin/env bash
# Runs `proglog bench` against two local nodes started here, one with mutual
# TLS (development certificates) and one with --insecure, alternating between
# them for ROUNDS rounds, and prints every JSON line. Loopback only; the nodes
# and their data are removed at the end.
#
#   scripts/bench-rpc.sh [ROUNDS]        (default 3; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
cargo build --release --quiet
bin="$PWD/target/release/proglog"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

. scripts/node.sh

start plain "$bin" --insecure; plain_addr="$addr"; plain_pid="$pid"
start tls "$bin"; tls_addr="$addr"; tls_pid="$pid"
plain=(--insecure --addr "$plain_addr" --server-pid "$plain_pid")
tls=(--data-dir "$work/tls" --addr "$tls_addr" --server-pid "$tls_pid")

for round in $(seq "$rounds"); do
  for mode in plain tls; do
    if [ "$mode" = plain ]; then args=("${plain[@]}"); else args=("${tls[@]}"); fi
    echo "# round $round $mode W=1 single produce"
    "$bin" bench "${args[@]}" -n 20000 -w 1 -b 1 --no-consume | sed "s/^{/{\"node\":\"$mode\",/"
    echo "# round $round $mode W=64 single produce"
    "$bin" bench "${args[@]}" -n 200000 -w 64 -b 1 --no-consume | sed "s/^{/{\"node\":\"$mode\",/"
    echo "# round $round $mode batched produce (8 x 1000 in flight) + consumeStream"
    "$bin" bench "${args[@]}" -n 2000000 -w 8 -b 1000 | sed "s/^{/{\"node\":\"$mode\",/"
  done
done
