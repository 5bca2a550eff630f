#!/usr/bin/env bash
# Benchmark: clip's lazy mount against a full pull, measured side by side in one run.
#
#   (a) cold start: `clip index`-ed image, empty cache, `clip mount` + overlayfs + `runc run` of a
#       command, against `skopeo copy` + `umoci unpack` + `runc run` of the same image, with the
#       bytes each fetched from the registry; on plain loopback and again with the registry
#       behind a shaped link (its own network namespace, veth pair, 1 Gbit/s, 5 ms delay);
#   (b) warm read of every file through the mount against the same tree on local disk;
#   (c) time to open a 100k-entry index and have the mount ready.
#
#   bench/mount.sh        (root; needs scripts/setup-debian.sh)
#
# SPEC targets: cold start ≥ 10× faster, ≤ 5% of the compressed image fetched, warm reads
# ≥ 0.8× native, mount ready < 50 ms for 100k entries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/shaped.sh

build_clip
MOUNTS=()
cleanup_bench() {
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || "$CLIP" umount "$m" 2>/dev/null || true; done
  stop_shaped_registry
  cleanup
}
trap cleanup_bench EXIT

# --- the image: a busybox userland plus ~1 GB of real files from this machine's /usr --------
root=$BENCH_TMP/rootfs
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev}
cp /bin/busybox "$root/bin/busybox"
for t in sh cat ls wc head sha256sum; do ln -s busybox "$root/bin/$t"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'ID=clip-bench\n' > "$root/etc/os-release"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/l0.tar.gz.tar" .
tar_to_layer "$BENCH_TMP/l0.tar.gz"
make_layer "$BENCH_TMP/l1.tar.gz" usr/share
make_layer "$BENCH_TMP/l2.tar.gz" usr/bin usr/include usr/libexec usr/sbin
make_layer "$BENCH_TMP/l3.tar.gz" usr/local usr/lib/python3* usr/lib/gcc
layers=("$BENCH_TMP"/l0.tar.gz "$BENCH_TMP"/l1.tar.gz "$BENCH_TMP"/l2.tar.gz "$BENCH_TMP"/l3.tar.gz)
compressed=0
for l in "${layers[@]}"; do compressed=$((compressed + $(stat -c %s "$l"))); done

CMD='cat /etc/os-release; ls /usr/share | wc -l; head -c 100000 /usr/share/common-licenses/GPL-3 | sha256sum'

make_bundle() { # make_bundle DIR ROOTFS
  mkdir -p "$1"
  (cd "$1" && runc spec)
  jq --arg rootfs "$2" --arg cmd "$CMD" \
    '.process.terminal=false | .process.args=["/bin/sh","-c",$cmd] | .root.path=$rootfs | .root.readonly=false' \
    "$1/config.json" > "$1/config.tmp" && mv "$1/config.tmp" "$1/config.json"
}

cold_start() { # cold_start REGISTRY_ADDR LOG label
  local reg=$1 log=$2 label=$3 t0 t1 before after
  # clip: index is made once, ahead of time (it is what is distributed); cold = empty cache.
  "$CLIP" index --quiet --insecure "$reg/bench/usr:latest" "$BENCH_TMP/usr.clip"
  rm -rf "$BENCH_TMP/cache" "$BENCH_TMP/mnt" "$BENCH_TMP/ovl"
  mkdir -p "$BENCH_TMP/ovl"/{upper,work,merged}
  before=$(registry_bytes "$log")
  t0=$(now)
  "$CLIP" mount --daemon --insecure --cache-dir "$BENCH_TMP/cache" --log-file "$BENCH_TMP/mount.log" \
    "$BENCH_TMP/usr.clip" "$BENCH_TMP/mnt" 2>/dev/null
  MOUNTS+=("$BENCH_TMP/mnt")
  mount -t overlay overlay -o "lowerdir=$BENCH_TMP/mnt,upperdir=$BENCH_TMP/ovl/upper,workdir=$BENCH_TMP/ovl/work" "$BENCH_TMP/ovl/merged"
  make_bundle "$BENCH_TMP/b1" "$BENCH_TMP/ovl/merged"
  runc run --bundle "$BENCH_TMP/b1" "clip-bench-$$" > "$BENCH_TMP/out1" </dev/null
  t1=$(now)
  after=$(registry_bytes "$log")
  clip_secs=$(elapsed "$t0" "$t1"); clip_bytes=$((after - before))
  umount "$BENCH_TMP/ovl/merged"; "$CLIP" umount "$BENCH_TMP/mnt"; rm -rf "$BENCH_TMP/b1"

  # Full pull: skopeo copy + umoci unpack + runc run.
  rm -rf "$BENCH_TMP/oci" "$BENCH_TMP/unpacked"
  before=$(registry_bytes "$log")
  t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$reg/bench/usr:latest" "oci:$BENCH_TMP/oci:latest"
  umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/unpacked" >/dev/null
  make_bundle "$BENCH_TMP/b2" "$BENCH_TMP/unpacked/rootfs"
  runc run --bundle "$BENCH_TMP/b2" "clip-bench-$$" > "$BENCH_TMP/out2" </dev/null
  t1=$(now)
  after=$(registry_bytes "$log")
  pull_secs=$(elapsed "$t0" "$t1"); pull_bytes=$((after - before))
  rm -rf "$BENCH_TMP/b2"
  cmp -s "$BENCH_TMP/out1" "$BENCH_TMP/out2" || { echo "container output differs!"; diff "$BENCH_TMP/out1" "$BENCH_TMP/out2"; }

  printf '\n(a) cold start, %s\n' "$label"
  printf '  %-44s %8.2f s  %12s bytes fetched\n' "full pull: skopeo copy + umoci unpack + runc" "$pull_secs" "$pull_bytes"
  printf '  %-44s %8.2f s  %12s bytes fetched\n' "clip: mount (empty cache) + overlay + runc" "$clip_secs" "$clip_bytes"
  printf '  %-44s %8.1fx (target ≥ 10x)\n' "speed-up" "$(echo "$pull_secs / $clip_secs" | bc -l)"
  printf '  %-44s %8.2f %% of %s compressed bytes (target ≤ 5 %%)\n' "fetched by clip" \
    "$(echo "100 * $clip_bytes / $compressed" | bc -l)" "$compressed"
}

# --- (a) on loopback -----------------------------------------------------------------------
start_registry 0.0.0.0
push_image bench/usr:latest "${layers[@]}"
cold_start "$REGISTRY" "$BENCH_TMP/registry.log" "registry on loopback"

# --- (a) behind a shaped link: the registry in a network namespace of our own ---------------
start_shaped_registry
cold_start "$SHAPED" "$SHAPED_LOG" "registry in its own netns behind veth, tbf 1 Gbit/s, $DELAY each way"

# --- (b) warm read of every file --------------------------------------------------------------
"$CLIP" mount --daemon --insecure --cache-dir "$BENCH_TMP/cache" "$BENCH_TMP/usr.clip" "$BENCH_TMP/mnt" 2>/dev/null
MOUNTS+=("$BENCH_TMP/mnt")
(cd "$BENCH_TMP/mnt" && tar -cf - . | cat >/dev/null)            # fill the cache
"$CLIP" umount "$BENCH_TMP/mnt"
"$CLIP" mount --daemon --insecure --cache-dir "$BENCH_TMP/cache" "$BENCH_TMP/usr.clip" "$BENCH_TMP/mnt" 2> "$BENCH_TMP/daemon.out"
daemon_pid=$(sed -n 's/.*(pid \([0-9]*\),.*/\1/p' "$BENCH_TMP/daemon.out")
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); (cd "$BENCH_TMP/mnt" && tar -cf - . | cat >/dev/null); t1=$(now)
mount_secs=$(elapsed "$t0" "$t1")
daemon_hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$daemon_pid/status" 2>/dev/null || echo "?")
"$CLIP" umount "$BENCH_TMP/mnt"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); (cd "$BENCH_TMP/unpacked/rootfs" && tar -cf - . | cat >/dev/null); t1=$(now)
disk_secs=$(elapsed "$t0" "$t1")
bytes=$(du -sb "$BENCH_TMP/unpacked/rootfs" | cut -f1)
printf '\n(b) warm read of every file (%s MB, page cache dropped before each)\n' $((bytes / 1000000))
printf '  %-44s %8.2f s  %6.0f MB/s\n' "local disk (umoci unpack)" "$disk_secs" "$(echo "$bytes / $disk_secs / 1000000" | bc -l)"
printf '  %-44s %8.2f s  %6.0f MB/s\n' "clip mount, warm cache" "$mount_secs" "$(echo "$bytes / $mount_secs / 1000000" | bc -l)"
printf '  %-44s %8.2fx (target ≥ 0.8x)\n' "clip / native throughput" "$(echo "$disk_secs / $mount_secs" | bc -l)"
printf '  %-44s %8s MB (target < 64 MB for 1 GB read)\n' "mount daemon peak RSS (VmHWM)" "$daemon_hwm"

# --- (c) a 100k-entry index: open it and have the mount ready ---------------------------------
big=$BENCH_TMP/big
mkdir -p "$big"
python3 - "$big" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(400):
    p = os.path.join(root, f"pkg{d:03}")
    os.mkdir(p)
    for f in range(250):
        with open(os.path.join(p, f"file{f:03}.txt"), "w") as fh:
            fh.write(f"{d} {f}\n")
PY
tar -C "$big" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/lbig.tar.gz.tar" .
tar_to_layer "$BENCH_TMP/lbig.tar.gz"
push_image bench/many:latest "$BENCH_TMP/lbig.tar.gz"
"$CLIP" index --quiet "$REGISTRY/bench/many:latest" "$BENCH_TMP/many.clip"
entries=$("$CLIP" inspect --json "$BENCH_TMP/many.clip" | jq .entries.total)
best=999
for _ in 1 2 3 4 5; do
  t0=$(now)
  "$CLIP" mount --daemon --insecure --cache-dir "$BENCH_TMP/cache" "$BENCH_TMP/many.clip" "$BENCH_TMP/mnt2" 2>/dev/null
  t1=$(now)
  MOUNTS+=("$BENCH_TMP/mnt2")
  "$CLIP" umount "$BENCH_TMP/mnt2"
  s=$(elapsed "$t0" "$t1"); best=$(echo "if ($s < $best) $s else $best" | bc -l)
done
printf '\n(c) %s-entry index (%s bytes): clip mount --daemon until ready, best of 5: %.1f ms (target < 50 ms)\n' \
  "$entries" "$(stat -c %s "$BENCH_TMP/many.clip")" "$(echo "$best * 1000" | bc -l)"
