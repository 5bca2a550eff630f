#!/usr/bin/env bash
# Benchmark: a container's start through containerd on a "second node" — a fresh containerd
# (own root, state and socket), a fresh snapshotter root and an empty clip cache — measured
# side by side in one run, on plain loopback and again with the registry behind a shaped link
# (its own network namespace, veth pair, 1 Gbit/s, 5 ms each way):
#
#   clip       ctr-remote image rpull --snapshotter clip IMAGE  +  ctr run --snapshotter clip
#              (clip snapshotter as containerd's proxy snapshotter; lazy pull: the index and,
#              when CI recorded one, the startup profile come from the registry)
#   baseline   ctr image pull IMAGE  +  ctr run  (containerd's own overlayfs snapshotter)
#
# with wall times and the bytes each fetched from the registry (its access log): layer bytes
# (layer blobs, whole or by range), window bytes (the seek windows of the spans read, by range
# from the index blob) and the rest (manifests, config, referrers, the index's metadata, the
# profile). The image and command are bench/run.sh's: a Debian-like userland with a Python
# interpreter (≥ 500 MB compressed) built from this machine's /usr; the command starts Python
# and imports a few modules of its standard library. "CI" (not timed) pushes the image's clip
# index and, unless --no-profile, a startup profile recorded by `clip run --record --push`.
#
#   bench/snapshotter.sh [--no-profile]     (root; needs scripts/setup-debian.sh)
#
# Target (issue 9): rpull + run through clip ≥ 10× faster than pull + run through overlayfs on
# the shaped link.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=1
case "${1:-}" in
  "") ;;
  --no-profile) profile=0 ;;
  *) echo "usage: $0 [--no-profile]" >&2; exit 2 ;;
esac
. scripts/lib.sh
. bench/shaped.sh
. bench/python_image.sh
. bench/containerd.sh

build_clip
cleanup_bench() {
  set +e
  containerd_cleanup
  stop_shaped_registry
  if [ -n "$(mounts_below "$BENCH_TMP")" ]; then
    echo "mounts left below $BENCH_TMP (not removed):" >&2
    mounts_below "$BENCH_TMP" >&2
    [ -z "$REGISTRY_PID" ] || kill "$REGISTRY_PID" 2>/dev/null
    return
  fi
  cleanup
}
trap cleanup_bench EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

push_python_image

# "CI": index the image once and push the index beside it; record the start once and push the
# profile beside it (neither is timed: done once per image).
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet "$REGISTRY/bench/py:latest"
if [ "$profile" = 1 ]; then
  CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" run --record --push "$REGISTRY/bench/py:latest" \
    "${PY_CMD[@]}" >/dev/null 2>"$BENCH_TMP/record.err" </dev/null || { cat "$BENCH_TMP/record.err"; exit 1; }
fi

runs=0
# check_output FILE WHAT: FILE holds what PY_CMD prints.
check_output() {
  [ "$(cat "$1")" = "$PY_EXPECTED" ] && return 0
  echo "$2 printed other things than $PY_EXPECTED:" >&2; cat "$1" >&2; return 1
}

# baseline LOG IMAGE DIR: a fresh containerd (overlayfs) in DIR: ctr image pull + ctr run.
# Sets BASE=(pull_s run_s total_s layer_bytes window_bytes other_bytes).
baseline() {
  local log=$1 image=$2 dir=$3 since until t0 t1 t2 layer all
  start_containerd "$dir"
  runs=$((runs + 1))
  since=$(wc -l < "$log")
  t0=$(now)
  ctrd image pull --plain-http "$image" >"$dir/pull.out" 2>&1 || { cat "$dir/pull.out"; return 1; }
  t1=$(now)
  ctrd run --rm "$image" "clip-bench-$runs" "${PY_CMD[@]}" >"$dir/run.out" 2>"$dir/run.err" </dev/null \
    || { cat "$dir/run.err"; return 1; }
  t2=$(now)
  until=$(wc -l < "$log")
  check_output "$dir/run.out" "ctr run (overlayfs)"
  layer=$(bytes_matching "$log" "$since" "$until" "$PY_LAYER_DIGESTS")
  all=$(bytes_matching "$log" "$since" "$until" ".")
  BASE=("$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t0" "$t2")" "$layer" 0 $((all - layer)))
  stop_containerd
  unmount_below "$dir"
  rm -rf "$dir"
}

# clip_node LOG IMAGE DIR: a fresh clip snapshotter (empty cache) and containerd in DIR:
# ctr-remote image rpull + ctr run, both through clip. The bytes are counted until the mount
# fetches nothing more in the background (the profile's replay included). Sets
# CLIP_ROW=(rpull_s run_s total_s layer_bytes window_bytes other_bytes) and PROFILE_SPANS (the
# spans the mount prefetched from the profile).
clip_node() {
  local log=$1 image=$2 dir=$3 since until t0 t1 t2 layer all mnt="" m split
  start_snapshotter "$dir"
  start_containerd "$dir" "$SNAP_SOCK"
  runs=$((runs + 1))
  since=$(wc -l < "$log")
  t0=$(now)
  ctrd_remote image rpull --plain-http --snapshotter clip "$image" >"$dir/rpull.out" 2>&1 \
    || { cat "$dir/rpull.out" "$dir/snapshotter.log"; return 1; }
  t1=$(now)
  ctrd run --rm --snapshotter clip "$image" "clip-bench-$runs" "${PY_CMD[@]}" >"$dir/run.out" 2>"$dir/run.err" </dev/null \
    || { cat "$dir/run.err" "$dir/snapshotter.log"; return 1; }
  t2=$(now)
  for m in $(mounts_below "$SNAP_ROOT/images"); do
    case "$(mount_type "$m")" in fuse*) mnt=$m ;; esac
  done
  [ -n "$mnt" ] || { echo "no clip mount below $SNAP_ROOT/images: the pull was not lazy" >&2; cat "$dir/snapshotter.log" >&2; return 1; }
  "$CLIP" stats --json --wait 120 "$mnt" > "$dir/stats.json"
  until=$(wc -l < "$log")
  check_output "$dir/run.out" "ctr run (clip)"
  PROFILE_SPANS=$(jq -r '.prefetch_spans // 0' "$dir/stats.json")
  layer=$(bytes_matching "$log" "$since" "$until" "$PY_LAYER_DIGESTS")
  all=$(bytes_matching "$log" "$since" "$until" ".")
  read -r -a split <<<"$(index_bytes "$log" "$since" "$until" "$image" "$dir/cache")"
  CLIP_ROW=("$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t0" "$t2")" "$layer" "${split[1]}" $((all - layer - split[1])))
  stop_containerd
  stop_snapshotter
  unmount_below "$dir"
  rm -rf "$dir"
}

row() { # row LABEL PULL RUN TOTAL LAYER WINDOW OTHER BASELINE_TOTAL
  printf '  %-48s %9.2f %8.2f %8.2f  %12s %12s %12s  %8.1fx\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" \
    "$(echo "$8 / $4" | bc -l)"
}

# node REGISTRY_ADDR LOG LABEL [target]: both starts against one registry, and their table;
# with `target`, the speed-up against issue 9's target.
node() {
  local reg=$1 log=$2 label=$3 target=${4:-} image speedup
  image=$reg/bench/py:latest
  baseline "$log" "$image" "$BENCH_TMP/node-base"
  clip_node "$log" "$image" "$BENCH_TMP/node-clip"
  speedup=$(echo "${BASE[2]} / ${CLIP_ROW[2]}" | bc -l)
  printf '\n%s\n' "$label"
  printf '  %-48s %9s %8s %8s  %12s %12s %12s  %9s\n' "" "(r)pull s" "run s" "total s" \
    "layer bytes" "window bytes" "other bytes" "speed-up"
  row "baseline: ctr image pull + ctr run (overlayfs)" "${BASE[@]}" "${BASE[2]}"
  row "clip: ctr-remote image rpull + ctr run (clip)" "${CLIP_ROW[@]}" "${BASE[2]}"
  if [ "$profile" = 1 ]; then
    printf '  startup profile: pushed by CI; the clip mount prefetched %s spans of it\n' "$PROFILE_SPANS"
  else
    printf '  startup profile: none (--no-profile); the clip mount prefetched %s spans\n' "$PROFILE_SPANS"
  fi
  printf '  clip fetched %.1f %% of the compressed image (%s bytes)\n' \
    "$(echo "100 * (${CLIP_ROW[3]} + ${CLIP_ROW[4]} + ${CLIP_ROW[5]}) / $PY_COMPRESSED" | bc -l)" "$PY_COMPRESSED"
  if [ -n "$target" ]; then
    printf '  speed-up %.1fx against the target of ≥ 10x (issue 9): %.2fx the target, %s\n' "$speedup" \
      "$(echo "$speedup / 10" | bc -l)" "$([ "$(echo "$speedup >= 10" | bc -l)" = 1 ] && echo met || echo NOT met)"
  else
    printf '  speed-up %.1fx (the target, ≥ 10x, is for the shaped link)\n' "$speedup"
  fi
}

node "$REGISTRY" "$BENCH_TMP/registry.log" "second node through containerd, registry on loopback"
start_shaped_registry
node "$SHAPED" "$SHAPED_LOG" "second node through containerd, registry in its own netns behind veth, tbf 1 Gbit/s, $DELAY each way" target
