#!/usr/bin/env bash
# Soak: N readers × T seconds of random reads through a clip mount, every byte compared with
# the reference unpack of the same image (`skopeo copy` + `umoci unpack`); optionally with the
# registry stopped and started again K times while they read. Not a test: it runs for as long
# as it is told and prints what it saw.
#
#   bench/soak.sh [READERS] [SECONDS] [OUTAGES]     (root; after scripts/setup-debian.sh)
#   e.g. bench/soak.sh 32 90 5
#
# Prints: reads, bytes compared, mismatches (must be 0: a wrong byte is never acceptable),
# errors (EIO while the registry is away is expected; after it is back they must stop), the
# mount's counters and its peak RSS, and a final full comparison of the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
READERS=${1:-16}
SECONDS_TO_RUN=${2:-60}
OUTAGES=${3:-0}

build_clip
MNT=$BENCH_TMP/mnt
soak_cleanup() {
  "$CLIP" umount "$MNT" 2>/dev/null || true
  cleanup
}
trap soak_cleanup EXIT

# An image of real files: text, libraries, many small files.
make_layer "$BENCH_TMP/a.tar.gz" usr/share/doc usr/share/perl
make_layer "$BENCH_TMP/b.tar.gz" usr/lib/x86_64-linux-gnu/perl-base usr/share/zoneinfo usr/bin
start_registry
push_image soak/img:1 "$BENCH_TMP/a.tar.gz" "$BENCH_TMP/b.tar.gz"
compressed=$(( $(stat -c %s "$BENCH_TMP/a.tar.gz") + $(stat -c %s "$BENCH_TMP/b.tar.gz") ))
echo "image: $((compressed / 1000000)) MB compressed, 2 layers"

"$CLIP" index --quiet --span 256k "$REGISTRY/soak/img:1" "$BENCH_TMP/img.clip"
skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/soak/img:1" "oci:$BENCH_TMP/oci:img" >/dev/null
umoci unpack --image "$BENCH_TMP/oci:img" "$BENCH_TMP/ref" >/dev/null 2>&1
REF=$BENCH_TMP/ref/rootfs

mkdir -p "$MNT"
"$CLIP" mount --daemon --cache-dir "$BENCH_TMP/cache" --read-timeout 10 \
  --log-file "$BENCH_TMP/mount.log" "$BENCH_TMP/img.clip" "$MNT" 2> "$BENCH_TMP/daemon.out"
daemon_pid=$(grep -o 'pid [0-9]*' "$BENCH_TMP/daemon.out" | cut -d' ' -f2)

outages() {
  [ "$OUTAGES" -gt 0 ] || return 0
  local every=$((SECONDS_TO_RUN / (OUTAGES + 1)))
  for i in $(seq "$OUTAGES"); do
    sleep "$every"
    kill "$REGISTRY_PID"; wait "$REGISTRY_PID" 2>/dev/null || true
    echo "outage $i: registry stopped"
    sleep 3
    docker-registry serve "$REGISTRY_CONFIG" >>"$BENCH_TMP/registry.log" 2>&1 &
    REGISTRY_PID=$!
    wait_registry "$REGISTRY"
    echo "outage $i: registry back"
  done
}
outages &
outage_pid=$!

python3 bench/soak_reader.py "$MNT" "$REF" "$READERS" "$SECONDS_TO_RUN"
wait "$outage_pid" || true

echo "mount counters: $("$CLIP" stats "$MNT")"
echo "mount daemon peak RSS: $(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$daemon_pid/status") MB"
# Everything once more, with the registry up: the tree must be exact.
python3 bench/soak_reader.py "$MNT" "$REF" 0 0
"$CLIP" umount "$MNT"
