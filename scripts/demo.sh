#!/usr/bin/env bash
# The demo: a local registry and a small demo image pushed to it; "CI" indexes it and pushes the
# index beside the image; a "node" with an empty cache pulls, inspects, mounts and runs it from
# the image reference alone (`clip run`, runc).
# Run on a Debian machine as root after scripts/setup-debian.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

build_clip

# A two-layer image: busybox as the userland, then an app layer that deletes a file.
root=$BENCH_TMP/rootfs
mkdir -p "$root"/{bin,etc,tmp,root}
cp /bin/busybox "$root/bin/busybox"
for tool in sh ls cat echo head wc sha256sum uname id; do ln -s busybox "$root/bin/$tool"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'NAME="clip demo"\nID=clip-demo\n' > "$root/etc/os-release"
echo "scratch" > "$root/etc/motd"
chmod 1777 "$root/tmp"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/base.tar.gz.tar" .
tar_to_layer "$BENCH_TMP/base.tar.gz"

app=$BENCH_TMP/app
mkdir -p "$app/app" "$app/etc"
printf '#!/bin/sh\necho "hello from a lazily mounted image"\ncat /etc/os-release\n' > "$app/app/hello.sh"
chmod 755 "$app/app/hello.sh"
: > "$app/etc/.wh.motd"
tar -C "$app" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/app.tar.gz.tar" .
tar_to_layer "$BENCH_TMP/app.tar.gz"

start_registry
push_image demo/hello:1.0 "$BENCH_TMP/base.tar.gz" "$BENCH_TMP/app.tar.gz"
echo "registry on $REGISTRY with demo/hello:1.0"

IMAGE=$REGISTRY/demo/hello:1.0
# "CI" indexes the image once and pushes the index beside it, into the image's repository.
step "clip index --push $IMAGE" "(in CI)"
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push "$IMAGE"

# A "node" with an empty cache finds the index from the image reference alone.
export CLIP_CACHE_DIR=$BENCH_TMP/node-cache
step clip pull "$IMAGE" hello.clip "(on a node)"
"$CLIP" pull "$IMAGE" "$BENCH_TMP/hello.clip"
step clip inspect "$IMAGE"
"$CLIP" inspect "$IMAGE"
step clip inspect --ls /etc "$IMAGE"
"$CLIP" inspect --ls /etc "$IMAGE"
step clip inspect --ls /app hello.clip
"$CLIP" inspect --ls /app "$BENCH_TMP/hello.clip"

# Mount the index lazily and look around: metadata comes from the index alone.
MNT=$BENCH_TMP/mnt
demo_cleanup() {
  "$CLIP" umount "$MNT" 2>/dev/null || true
  cleanup
}
trap demo_cleanup EXIT

step clip mount --daemon "$IMAGE" "$MNT"
"$CLIP" mount --daemon "$IMAGE" "$MNT"
step ls -l "$MNT" "$MNT/etc"
ls -l "$MNT" "$MNT/etc"
step cat "$MNT/app/hello.sh"
cat "$MNT/app/hello.sh"
step clip stats "$MNT"
"$CLIP" stats "$MNT"
step clip umount "$MNT"
"$CLIP" umount "$MNT"

# Run the image's app as a container: clip run mounts the image (shared by every run of it),
# puts a fresh overlay on top, makes config.json from the image config and runs it with runc;
# everything is removed when the container exits, and its exit code is clip run's.
step clip run "$IMAGE" /app/hello.sh
"$CLIP" run "$IMAGE" /app/hello.sh </dev/null
step clip run -u nobody -w /srv/hello -e GREETING=hi hello.clip sh -c '"id; pwd; echo \$GREETING; exit 3"'
set +e
"$CLIP" run -u nobody -w /srv/hello -e GREETING=hi \
  "$BENCH_TMP/hello.clip" sh -c 'id; pwd; echo $GREETING; exit 3' </dev/null
code=$?
set -e
echo "exit code: $code"
[ "$code" = 3 ]
