#!/usr/bin/env bash
# Benchmark: a container's cold start on a "second node" — one that never saw the image, with
# empty caches — by `clip run IMAGE` (the index pulled from the registry, where CI pushed it)
# against `skopeo copy` + `umoci unpack` + `runc run`, measured side by side in one run, on
# plain loopback and again with the registry behind a shaped link (its own network namespace,
# veth pair, 1 Gbit/s, 5 ms each way). The image: a multi-layer Debian-like userland with a
# Python interpreter (≥ 500 MB compressed) built from this machine's /usr; the command starts
# Python and imports a few modules of its standard library.
#
#   bench/run.sh        (root; needs scripts/setup-debian.sh)
#
# Prints the times, their ratio, the bytes each fetched and the share of clip's bytes that was
# the index download. SPEC target: ≥ 10× faster than the pull path on the shaped link, index
# download included.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. bench/shaped.sh
. bench/python_image.sh

build_clip
cleanup_bench() {
  stop_shaped_registry
  cleanup
}
trap cleanup_bench EXIT

build_python_image
layers=("${PY_LAYERS[@]}")
compressed=$PY_COMPRESSED
CMD=("${PY_CMD[@]}")

start_registry 0.0.0.0
push_image bench/py:latest "${layers[@]}"
# "CI": index the image once and push the index beside it (not timed: done once per image).
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet "$REGISTRY/bench/py:latest"

cold_start() { # cold_start REGISTRY_ADDR LOG label
  local reg=$1 log=$2 label=$3 t0 t1 since before after
  local image=$reg/bench/py:latest

  # clip: a node with an empty cache and no image mount.
  rm -rf "$BENCH_TMP/node-cache"
  since=$(wc -l < "$log")
  before=$(registry_bytes "$log")
  t0=$(now)
  "$CLIP" run --insecure --cache-dir "$BENCH_TMP/node-cache" --no-index "$image" "${CMD[@]}" \
    > "$BENCH_TMP/out1" 2> "$BENCH_TMP/run.err" </dev/null || { cat "$BENCH_TMP/run.err"; return 1; }
  t1=$(now)
  after=$(registry_bytes "$log")
  clip_secs=$(elapsed "$t0" "$t1"); clip_bytes=$((after - before))
  # The index download: the referrers tag's index, the artifact's manifest and its blob.
  index_bytes=$(index_download_bytes "$log" "$since" "$image" "$BENCH_TMP/node-cache")

  # Full pull: skopeo copy + umoci unpack + runc run.
  rm -rf "$BENCH_TMP/oci" "$BENCH_TMP/unpacked" "$BENCH_TMP/bundle"
  before=$(registry_bytes "$log")
  t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$BENCH_TMP/oci:latest"
  umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/bundle" >/dev/null
  bundle_for "$BENCH_TMP/bundle"
  runc run --bundle "$BENCH_TMP/bundle" "clip-bench-$$" > "$BENCH_TMP/out2" </dev/null
  t1=$(now)
  after=$(registry_bytes "$log")
  pull_secs=$(elapsed "$t0" "$t1"); pull_bytes=$((after - before))
  cmp -s "$BENCH_TMP/out1" "$BENCH_TMP/out2" || { echo "container output differs!"; diff "$BENCH_TMP/out1" "$BENCH_TMP/out2"; }

  printf '\n%s\n' "$label"
  printf '  %-50s %8.2f s  %12s bytes fetched\n' "full pull: skopeo copy + umoci unpack + runc run" "$pull_secs" "$pull_bytes"
  printf '  %-50s %8.2f s  %12s bytes fetched\n' "clip run IMAGE (empty cache, index pulled)" "$clip_secs" "$clip_bytes"
  printf '  %-50s %8.1fx (target ≥ 10x on the shaped link)\n' "speed-up" "$(echo "$pull_secs / $clip_secs" | bc -l)"
  printf '  %-50s %8.2f %% of %s compressed bytes\n' "fetched by clip" \
    "$(echo "100 * $clip_bytes / $compressed" | bc -l)" "$compressed"
  printf '  %-50s %8.1f %% of clip'"'"'s bytes (%s bytes)\n' "of which the index download" \
    "$(echo "100 * $index_bytes / $clip_bytes" | bc -l)" "$index_bytes"
  printf '  container printed: %s\n' "$(cat "$BENCH_TMP/out1")"
}

cold_start "$REGISTRY" "$BENCH_TMP/registry.log" "cold start on a second node, registry on loopback"
start_shaped_registry
cold_start "$SHAPED" "$SHAPED_LOG" "cold start on a second node, registry in its own netns behind veth, tbf 1 Gbit/s, $DELAY each way"
