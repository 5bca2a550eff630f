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

build_clip
cleanup_bench() {
  stop_shaped_registry
  cleanup
}
trap cleanup_bench EXIT

# --- the image -------------------------------------------------------------------------------
echo "building the image's layers from /usr ..."
root=$BENCH_TMP/rootfs
mkdir -p "$root"/{etc,tmp,root,proc,sys,dev,usr/lib64}
for d in bin lib sbin; do ln -s "usr/$d" "$root/$d"; done
ln -s usr/lib64 "$root/lib64"
cp -P /usr/lib64/ld-linux-x86-64.so.2 "$root/usr/lib64/"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'ID=clip-bench\n' > "$root/etc/os-release"
chmod 1777 "$root/tmp"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$BENCH_TMP/l0.tar.gz.tar" .
tar_to_layer "$BENCH_TMP/l0.tar.gz"
make_layer "$BENCH_TMP/l1.tar.gz" usr/lib/x86_64-linux-gnu
make_layer "$BENCH_TMP/l2.tar.gz" usr/bin usr/sbin usr/lib/python3 usr/lib/python3.*
make_layer "$BENCH_TMP/l3.tar.gz" usr/share
layers=("$BENCH_TMP"/l0.tar.gz "$BENCH_TMP"/l1.tar.gz "$BENCH_TMP"/l2.tar.gz "$BENCH_TMP"/l3.tar.gz)
compressed=0
for l in "${layers[@]}"; do compressed=$((compressed + $(stat -c %s "$l"))); done
echo "image: ${#layers[@]} layers, $compressed bytes compressed"

CMD=(/usr/bin/python3 -c 'import json, decimal, email.parser, urllib.parse; print(json.dumps({"python": "ok"}))')

start_registry 0.0.0.0
push_image bench/py:latest "${layers[@]}"
# "CI": index the image once and push the index beside it (not timed: done once per image).
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet "$REGISTRY/bench/py:latest"

# bytes_matching LOG SINCE_LINE PATTERN: bytes sent for requests whose path matches PATTERN,
# in the access log's lines after SINCE_LINE.
bytes_matching() {
  tail -n +"$(($2 + 1))" "$1" | awk -v p="$3" '$9 ~ /^20[06]$/ && $7 ~ p {s += $10} END {print s+0}'
}

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
  local pulled index_blob subject artifact
  pulled=$("$CLIP" pull --json --insecure --cache-dir "$BENCH_TMP/node-cache" "$image")
  [ "$(jq -r .origin.source <<<"$pulled")" = registry ] || { echo "the index did not come from the registry: $pulled"; return 1; }
  artifact=$(jq -r .origin.artifact <<<"$pulled")
  index_blob=$(sha256sum "$(jq -r .path <<<"$pulled")" | cut -d' ' -f1)
  subject=$("$CLIP" inspect --json "$(jq -r .path <<<"$pulled")" | jq -r .manifest_digest)
  index_bytes=$(bytes_matching "$log" "$since" "${subject/:/-}|$artifact|$index_blob")

  # Full pull: skopeo copy + umoci unpack + runc run.
  rm -rf "$BENCH_TMP/oci" "$BENCH_TMP/unpacked" "$BENCH_TMP/bundle"
  before=$(registry_bytes "$log")
  t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$BENCH_TMP/oci:latest"
  umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/bundle" >/dev/null
  jq --argjson args "$(printf '%s\n' "${CMD[@]}" | jq -R . | jq -s .)" \
    '.process.terminal=false | .process.args=$args | .root.readonly=false' \
    "$BENCH_TMP/bundle/config.json" > "$BENCH_TMP/config.tmp"
  mv "$BENCH_TMP/config.tmp" "$BENCH_TMP/bundle/config.json"
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
