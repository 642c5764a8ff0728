#!/usr/bin/env bash
# Fills deploy/kubernetes/secrets/ (kept out of git) with what the
# kustomization turns into Secrets: the CA (certificate and key: each pod's
# init container issues its own node certificate from it), the ACL and the
# gossip key; plus root.pem/root.key, a client certificate for you.
# Uses target/release/proglog if built, else the image (PROGLOG_IMAGE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/secrets
mkdir -p "$out"
if [ -x "$here/../../target/release/proglog" ]; then
    certs() { "$here/../../target/release/proglog" certs --dir "$out" "$@"; }
else
    certs() {
        docker run --rm --user "$(id -u):$(id -g)" -v "$out:/out" \
            "${PROGLOG_IMAGE:-proglog:latest}" certs --dir /out "$@"
    }
fi
[ -f "$out/ca.pem" ] || certs ca >/dev/null
[ -f "$out/root.pem" ] || certs client --cn root >/dev/null
cp -n "$here/../acl/model.conf" "$here/../acl/policy.csv" "$out/"
[ -f "$out/cluster.key" ] || head -c 32 /dev/urandom | base64 > "$out/cluster.key"
echo "$out"
