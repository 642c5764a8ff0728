#!/usr/bin/env bash
# Makes, once, what a 3-node cluster needs to run with mutual TLS:
#   ca.pem/ca.key                    the cluster's CA
#   node1.pem/key .. node3.pem/key   node certificates (CN proglog-node is
#                                    what the ACL grants `replicate` to)
#   root.pem/key, nobody.pem/key     client certificates
#   cluster.key                      the gossip key (HMAC of every datagram)
#
#   deploy/make-certs.sh [DIR] [SUBNET_PREFIX]
#
# DIR defaults to deploy/compose/certs (what compose.yaml mounts). Node
# certificates name the node's host name, its fixed address on the compose
# network (SUBNET_PREFIX.11-13, default 10.84.0) and 127.0.0.1/localhost for
# clients on the host. Uses target/release/proglog if built, else the image
# (PROGLOG_IMAGE, default proglog:latest). Existing files are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/compose/certs}
prefix=${2:-10.84.0}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ -n "${PROGLOG_BIN:-}" ]; then
    certs() { "$PROGLOG_BIN" certs --dir "$dir" "$@"; }
elif [ -x "$here/../target/release/proglog" ]; then
    certs() { "$here/../target/release/proglog" certs --dir "$dir" "$@"; }
else
    image=${PROGLOG_IMAGE:-proglog:latest}
    certs() {
        docker run --rm --user "$(id -u):$(id -g)" -v "$dir:/certs" \
            "$image" certs --dir /certs "$@"
    }
fi

[ -f "$dir/ca.pem" ] || certs ca >/dev/null
for i in 1 2 3; do
    [ -f "$dir/node$i.pem" ] || certs server --name "node$i" \
        --host "node$i" --host "$prefix.1$i" --host localhost --host 127.0.0.1 >/dev/null
done
for cn in root nobody; do
    [ -f "$dir/$cn.pem" ] || certs client --cn "$cn" >/dev/null
done
[ -f "$dir/cluster.key" ] || head -c 32 /dev/urandom | base64 > "$dir/cluster.key"
# The nodes run as uid 65532 and must read their keys from this bind mount
# (fine for a cluster on one host; on a real one keys come from secrets).
# The CA and client keys stay readable by you alone.
chmod 0644 "$dir"/node*.key
echo "$dir"
