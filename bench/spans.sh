#!/usr/bin/env bash
# Benchmark: the span size trade-off. For each span size, the same Python image is indexed
# (and the index pushed), and a "second node" (empty caches, index pulled from the registry)
# starts the Python command with `clip run` with the registry behind a shaped link (its own
# network namespace, veth pair, 1 Gbit/s, 5 ms each way). Printed per span size: the index
# download (referrers, artifact manifest and the index's metadata: what every node downloads
# before mounting), the seek windows (which stay in the registry), the cold start, the bytes
# fetched (layer ranges, seek windows read by range, the rest) and how layer + window bytes
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

push_python_image 0.0.0.0

# The floor, from the unpacked image.
skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/bench/py:latest" "oci:$BENCH_TMP/oci:latest"
umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/bundle" >/dev/null
bundle_for "$BENCH_TMP/bundle"
start_floor "$BENCH_TMP/bundle"
echo "floor: the start opens $FLOOR_FILES files, $FLOOR_BYTES bytes, $FLOOR_GZIP gzip-compressed"

start_shaped_registry
image=$SHAPED/bench/py:latest
printf '\nsecond node, registry behind veth + tbf 1 Gbit/s + %s each way\n' "$DELAY"
printf '%6s %11s %11s %11s %8s %11s %11s %11s %8s\n' span checkpoints index-dl windows cold-s layer-bytes window-bytes other-bytes /floor
for span in ${SPANS:-128k 256k 512k 1M 2M}; do
  CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet --span "$span" "$REGISTRY/bench/py:latest"
  rm -rf "$BENCH_TMP/node-cache"
  since=$(wc -l < "$SHAPED_LOG")
  t0=$(now)
  "$CLIP" run --insecure --cache-dir "$BENCH_TMP/node-cache" --no-index "$image" "${PY_CMD[@]}" \
    > "$BENCH_TMP/out" 2> "$BENCH_TMP/run.err" </dev/null || { cat "$BENCH_TMP/run.err"; exit 1; }
  t1=$(now)
  until=$(wc -l < "$SHAPED_LOG")
  layer=$(bytes_matching "$SHAPED_LOG" "$since" "$until" "$PY_LAYER_DIGESTS")
  split=($(index_bytes "$SHAPED_LOG" "$since" "$until" "$image" "$BENCH_TMP/node-cache"))
  other=$(($(bytes_matching "$SHAPED_LOG" "$since" "$until" ".") - layer - split[1]))
  summary=$("$CLIP" inspect --json --cache-dir "$BENCH_TMP/node-cache" --no-index "$image")
  printf '%6s %11s %11s %11s %8.2f %11s %11s %11s %8.2f\n' "$span" "$(jq .checkpoints <<<"$summary")" \
    "${split[0]}" "$(jq .window_bytes <<<"$summary")" "$(elapsed "$t0" "$t1")" "$layer" "${split[1]}" \
    "$other" "$(echo "($layer + ${split[1]}) / $FLOOR_GZIP" | bc -l)"
done
