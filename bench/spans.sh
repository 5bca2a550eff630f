#!/usr/bin/env bash
# Benchmark: the span size trade-off. For each span size, the same Python image is indexed
# (and the index pushed), and a "second node" (empty caches, index pulled from the registry)
# starts the Python command with `clip run` with the registry behind a shaped link (its own
# network namespace, veth pair, 1 Gbit/s, 5 ms each way). Printed per span size: the index
# (what every node downloads before mounting), the cold start, the bytes fetched and how they
# compare with the floor: the files the start opens, each gzip-compressed on its own (from an
# strace of the same start on the unpacked tree).
#
#   bench/spans.sh                 (root; needs scripts/setup-debian.sh)
#   SPANS="256k 1M" bench/spans.sh
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
start_registry 0.0.0.0
push_image bench/py:latest "${PY_LAYERS[@]}"

# The floor, from the unpacked image.
skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/bench/py:latest" "oci:$BENCH_TMP/oci:latest"
umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/bundle" >/dev/null
bundle_for "$BENCH_TMP/bundle"
start_floor "$BENCH_TMP/bundle"
echo "floor: the start opens $FLOOR_FILES files, $FLOOR_BYTES bytes, $FLOOR_GZIP gzip-compressed"

start_shaped_registry
image=$SHAPED/bench/py:latest
printf '\nsecond node, registry behind veth + tbf 1 Gbit/s + %s each way\n' "$DELAY"
printf '%6s %10s %8s %9s %12s %12s %12s %9s\n' span checkpoints index cold-s fetched index-dl spans spans/floor
for span in ${SPANS:-256k 512k 1M 2M 4M}; do
  CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet --span "$span" "$REGISTRY/bench/py:latest"
  rm -rf "$BENCH_TMP/node-cache"
  since=$(wc -l < "$SHAPED_LOG")
  before=$(registry_bytes "$SHAPED_LOG")
  t0=$(now)
  "$CLIP" run --insecure --cache-dir "$BENCH_TMP/node-cache" --no-index "$image" "${PY_CMD[@]}" \
    > "$BENCH_TMP/out" 2> "$BENCH_TMP/run.err" </dev/null || { cat "$BENCH_TMP/run.err"; exit 1; }
  t1=$(now)
  fetched=$(($(registry_bytes "$SHAPED_LOG") - before))
  index_dl=$(index_download_bytes "$SHAPED_LOG" "$since" "$image" "$BENCH_TMP/node-cache")
  summary=$("$CLIP" inspect --json --cache-dir "$BENCH_TMP/node-cache" "$image")
  printf '%6s %10s %8s %9.2f %12s %12s %12s %9.2f\n' "$span" "$(jq .checkpoints <<<"$summary")" \
    "$(jq .index_bytes <<<"$summary")" "$(elapsed "$t0" "$t1")" "$fetched" "$index_dl" \
    "$((fetched - index_dl))" "$(echo "($fetched - $index_dl) / $FLOOR_GZIP" | bc -l)"
done
