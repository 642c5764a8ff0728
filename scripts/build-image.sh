#!/usr/bin/env bash
# Builds the proglog container image FROM scratch: a statically linked
# release binary (glibc linked in), the default ACL, a non-root user.
# Nothing is pulled from a registry.
#
#   scripts/build-image.sh [TAG]        # default tag: proglog:latest
#
# Needs a Docker engine (the legacy builder is enough).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-proglog:latest}
target=x86_64-unknown-linux-gnu

command -v docker >/dev/null || { echo "build-image: docker is not installed" >&2; exit 1; }

echo "build-image: static release build (--target $target, +crt-static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" --bin proglog
bin=target/$target/release/proglog
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "build-image: $bin is dynamically linked; refusing to put it in a scratch image" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/etc/proglog" "$context/data"
cp "$bin" "$context/proglog"
strip "$context/proglog" 2>/dev/null || true
cp -r deploy/acl "$context/etc/proglog/acl"
# Names for the numeric user, so tools inside and logs show who runs it.
echo 'proglog:x:65532:65532:proglog:/var/lib/proglog:/nonexistent' > "$context/etc/passwd"
echo 'proglog:x:65532:' > "$context/etc/group"
cp deploy/image/Dockerfile "$context/Dockerfile"

DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$context" >/dev/null
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "build-image: $tag built, $((size / 1024 / 1024)) MiB ($size bytes)" >&2
echo "$tag"
