#!/usr/bin/env bash
# Benchmark: `clip index` against the baseline `gzip -dc LAYER | tar -t >/dev/null` summed over
# the same layers, measured in the same run. Builds a multi-layer image (≥ 500 MB
# uncompressed) from this machine's /usr, pushes it to a throwaway local registry, and prints
# times, their ratio, index size per entry and clip's peak memory.
#
#   bench/index.sh            (needs scripts/setup-debian.sh; run from anywhere)
#
# SPEC targets: ratio ≤ 1.0 (aim 0.6 on two cores), ≤ 64 bytes per entry without windows.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

build_clip

echo "building layers from /usr ..."
make_layer "$BENCH_TMP/l1.tar.gz" usr/share
make_layer "$BENCH_TMP/l2.tar.gz" usr/bin usr/include usr/libexec usr/sbin
make_layer "$BENCH_TMP/l3.tar.gz" usr/local usr/lib/python3* usr/lib/gcc
start_registry
push_image bench/usr:latest "$BENCH_TMP"/l1.tar.gz "$BENCH_TMP"/l2.tar.gz "$BENCH_TMP"/l3.tar.gz

compressed=0; uncompressed=0
for l in "$BENCH_TMP"/l*.tar.gz; do
  compressed=$((compressed + $(stat -c %s "$l")))
  uncompressed=$((uncompressed + $(gzip -l "$l" | awk 'NR==2{print $2}')))
done
# gzip -l wraps at 4 GiB; fine for these sizes.

now() { date +%s.%N; }
# Warm the page cache for both contenders alike.
cat "$BENCH_TMP"/l*.tar.gz >/dev/null
find "$BENCH_TMP/registry" -type f -exec cat {} + >/dev/null

t0=$(now)
for l in "$BENCH_TMP"/l*.tar.gz; do gzip -dc "$l" | tar -t >/dev/null; done
t1=$(now)
baseline=$(echo "$t1 - $t0" | bc -l)

/usr/bin/time -f '%M' -o "$BENCH_TMP/rss" "$CLIP" index --quiet --json "$REGISTRY/bench/usr:latest" "$BENCH_TMP/usr.clip" > "$BENCH_TMP/summary.json"
clip_secs=$(jq .seconds "$BENCH_TMP/summary.json")
entries=$(jq .entries "$BENCH_TMP/summary.json")
"$CLIP" inspect --json "$BENCH_TMP/usr.clip" > "$BENCH_TMP/inspect.json"
per_entry=$(jq .bytes_per_entry "$BENCH_TMP/inspect.json")
index_bytes=$(jq .index_bytes "$BENCH_TMP/inspect.json")
windows=$(jq .window_bytes "$BENCH_TMP/inspect.json")

printf '\nimage: 3 gzip layers, %s MB compressed, %s MB uncompressed, %s entries\n' \
  $((compressed / 1000000)) $((uncompressed / 1000000)) "$entries"
printf '%-42s %8.2f s\n' "baseline: gzip -dc | tar -t (sum)" "$baseline"
printf '%-42s %8.2f s  (%s MB/s uncompressed)\n' "clip index (--jobs $(nproc))" "$clip_secs" \
  "$(echo "$uncompressed / $clip_secs / 1000000" | bc)"
printf '%-42s %8.2f   (target ≤ 1.0, aim 0.6)\n' "ratio clip / baseline" "$(echo "$clip_secs / $baseline" | bc -l)"
printf '%-42s %8.1f   (target ≤ 64)\n' "index bytes per entry (windows aside)" "$per_entry"
printf '%-42s %8s bytes (%s of them seek windows)\n' "index size" "$index_bytes" "$windows"
printf '%-42s %8s MB\n' "clip peak RSS" "$(( $(cat "$BENCH_TMP/rss") / 1024 ))"

# The span trade-off: a read that misses the cache fetches one whole span of compressed bytes,
# and every span costs a checkpoint with its (compressed) 32 KiB window in the index.
echo
printf '%-8s %12s %14s %16s %10s\n' span "index bytes" "window bytes" "avg fetch/miss" "index s"
for span in 256k 512k 1M 2M 4M 8M; do
  "$CLIP" index --quiet --json --span "$span" "$REGISTRY/bench/usr:latest" "$BENCH_TMP/s.clip" > "$BENCH_TMP/s.json"
  "$CLIP" inspect --json "$BENCH_TMP/s.clip" > "$BENCH_TMP/si.json"
  printf '%-8s %12s %14s %13s KiB %10.2f\n' "$span" "$(jq .index_bytes "$BENCH_TMP/si.json")" \
    "$(jq .window_bytes "$BENCH_TMP/si.json")" \
    "$(jq '[.layers[] | .compressed_size] | add / 1024' "$BENCH_TMP/si.json" | cut -d. -f1 | xargs -I{} echo "{} / $(jq .checkpoints "$BENCH_TMP/si.json")" | bc)" \
    "$(jq .seconds "$BENCH_TMP/s.json")"
done
