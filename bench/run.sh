#!/usr/bin/env bash
# Benchmark: a container's start on a "second node" — one that never saw the image: empty
# caches, the index (and startup profile) pulled from the registry, where CI pushed them —
# measured side by side in one run, on plain loopback and again with the registry behind a
# shaped link (its own network namespace, veth pair, 1 Gbit/s, 5 ms each way):
#
#   cold, no profile    clip run --no-prefetch IMAGE CMD      (empty cache)
#   cold, profile       clip run IMAGE CMD                    (empty cache, profile replayed)
#   warm                clip run IMAGE CMD                    (the cache of the run before)
#   local tree          runc run on the unpacked image        (page cache warm)
#   full pull           skopeo copy + umoci unpack + runc run
#
# with the bytes each fetched from the registry: layer bytes (spans), window bytes (the seek
# windows of those spans, read by range from the index blob), pack bytes (the startup pack that
# comes with the profile: the spans and windows its replay reads, in one blob) and the rest
# (manifest, config, referrers, the index's metadata, the profile). The image: a multi-layer Debian-like userland with a
# Python interpreter (≥ 500 MB compressed) built from this machine's /usr; the command starts
# Python and imports a few modules of its standard library. The floor: the files that start
# opens (strace on the unpacked tree), each gzip-compressed on its own.
#
#   bench/run.sh        (root; needs scripts/setup-debian.sh)
#
# Targets (issue 8): cold start with a profile ≤ 1.5× the warm start and ≥ 10× faster than the
# full pull on the shaped link; layer + window + pack bytes fetched ≤ 1.5× the floor.
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

# "CI": index the image once and push the index beside it; record the start once and push the
# profile beside it (neither is timed: done once per image).
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" index --push --quiet "$REGISTRY/bench/py:latest"
CLIP_CACHE_DIR=$BENCH_TMP/ci-cache "$CLIP" run --record --push "$REGISTRY/bench/py:latest" \
  "${PY_CMD[@]}" >/dev/null 2>"$BENCH_TMP/record.err" </dev/null || { cat "$BENCH_TMP/record.err"; exit 1; }

# The local tree (the oracle of the output, and the floor).
skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/bench/py:latest" "oci:$BENCH_TMP/local:latest"
umoci unpack --image "$BENCH_TMP/local:latest" "$BENCH_TMP/local" >/dev/null
bundle_for "$BENCH_TMP/local"
start_floor "$BENCH_TMP/local"

# clip_start LOG LABEL CACHE ARGS...: one clip run; sets SECS, LAYER_BYTES (spans),
# WINDOW_BYTES (seek windows, from the index blob), PACK_BYTES (the startup pack) and
# OTHER_BYTES (manifests, referrers, the index's metadata, the profile).
clip_start() {
  local log=$1 label=$2 cache=$3 t0 t1 since until; shift 3
  since=$(wc -l < "$log")
  t0=$(now)
  "$CLIP" run --insecure --cache-dir "$cache" --no-index "$@" "$image" "${PY_CMD[@]}" \
    > "$BENCH_TMP/out.$label" 2> "$BENCH_TMP/err.$label" </dev/null || { cat "$BENCH_TMP/err.$label"; return 1; }
  t1=$(now)
  until=$(wc -l < "$log")
  SECS=$(elapsed "$t0" "$t1")
  LAYER_BYTES=$(bytes_matching "$log" "$since" "$until" "$PY_LAYER_DIGESTS")
  local split; split=($(index_bytes "$log" "$since" "$until" "$image" "$cache"))
  WINDOW_BYTES=${split[1]}
  PACK_BYTES=0
  # The pack's digest: of the pack made here, or as named by the registry's profile artifact.
  local pack digest
  for pack in "$cache"/indexes/*/*.pack "$cache"/indexes/*/*.pack.json; do
    [ -e "$pack" ] || continue
    case $pack in
      *.json) digest=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$pack") ;;
      *) digest=$(sha256sum "$pack" | cut -d' ' -f1) ;;
    esac
    PACK_BYTES=$((PACK_BYTES + $(bytes_matching "$log" "$since" "$until" "$digest")))
  done
  OTHER_BYTES=$(($(bytes_matching "$log" "$since" "$until" ".") - LAYER_BYTES - WINDOW_BYTES - PACK_BYTES))
  cmp -s "$BENCH_TMP/out.$label" "$BENCH_TMP/local.out" || { echo "clip run ($label) printed other things!"; diff "$BENCH_TMP/out.$label" "$BENCH_TMP/local.out"; }
}

# median "SECS BYTES..." ×3: the one with the median SECS.
median() {
  printf '%s\n' "$@" | sort -g | sed -n 2p
}

row() { # row LABEL SECS LAYER_BYTES WINDOW_BYTES PACK_BYTES OTHER_BYTES
  printf '  %-40s %8.2f s  %12s %12s %12s %12s  %8.1fx\n' "$1" "$2" "$3" "$4" "$5" "$6" "$(echo "$pull_secs / $2" | bc -l)"
}

start() { # start REGISTRY_ADDR LOG LABEL
  local reg=$1 log=$2 label=$3 t0 t1 before
  image=$reg/bench/py:latest

  # Local tree: runc on the unpacked image, twice (the second, with a warm page cache, counts).
  for _ in 1 2; do
    t0=$(now)
    runc run --bundle "$BENCH_TMP/local" "clip-bench-$$" > "$BENCH_TMP/local.out" </dev/null
    t1=$(now)
  done
  local_secs=$(elapsed "$t0" "$t1")

  # Full pull.
  rm -rf "$BENCH_TMP/oci" "$BENCH_TMP/bundle"
  before=$(registry_bytes "$log")
  t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$BENCH_TMP/oci:latest"
  umoci unpack --image "$BENCH_TMP/oci:latest" "$BENCH_TMP/bundle" >/dev/null
  bundle_for "$BENCH_TMP/bundle"
  runc run --bundle "$BENCH_TMP/bundle" "clip-bench-$$" > "$BENCH_TMP/pull.out" </dev/null
  t1=$(now)
  pull_secs=$(elapsed "$t0" "$t1")
  pull_bytes=$(($(registry_bytes "$log") - before))

  # Each clip start three times (the cold ones on empty caches of their own, the warm one
  # right after a cold one, on its cache); the row is the run with the median time. Dirty
  # pages of what ran before are written back first, so that none of it is timed here.
  local cold1=() cold2=() warm=() i
  for i in 1 2 3; do
    rm -rf "$BENCH_TMP/cold1.$i" "$BENCH_TMP/cold2.$i"
    sync
    clip_start "$log" cold1 "$BENCH_TMP/cold1.$i" --no-prefetch
    cold1+=("$SECS $LAYER_BYTES $WINDOW_BYTES $PACK_BYTES $OTHER_BYTES")
    sync
    clip_start "$log" cold2 "$BENCH_TMP/cold2.$i"
    cold2+=("$SECS $LAYER_BYTES $WINDOW_BYTES $PACK_BYTES $OTHER_BYTES")
    sync
    clip_start "$log" warm "$BENCH_TMP/cold2.$i"
    warm+=("$SECS $LAYER_BYTES $WINDOW_BYTES $PACK_BYTES $OTHER_BYTES")
  done
  cold1=($(median "${cold1[@]}"))
  cold2=($(median "${cold2[@]}"))
  warm=($(median "${warm[@]}"))
  local profile_spans
  profile_spans=$("$CLIP" inspect --json --cache-dir "$BENCH_TMP/cold2.1" --no-index "$image" | jq -r '.profile.spans')

  printf '\n%s\n' "$label"
  printf '  %-40s %10s  %12s %12s %12s %12s  %9s\n' "" "start" "layer bytes" "window bytes" "pack bytes" "other bytes" "vs pull"
  row "full pull: skopeo + umoci + runc" "$pull_secs" "$pull_bytes" 0 0 0
  row "clip run, cold, no profile" "${cold1[@]}"
  row "clip run, cold, profile ($profile_spans spans)" "${cold2[@]}"
  row "clip run, warm" "${warm[@]}"
  row "runc on the local tree" "$local_secs" 0 0 0 0
  printf '  cold with profile / warm: %.2fx (target ≤ 1.5x)\n' "$(echo "${cold2[0]} / ${warm[0]}" | bc -l)"
  printf '  (layer + window + pack bytes) / floor: no profile %.2fx, profile %.2fx (floor: %s files, %s bytes, %s gzipped; target ≤ 1.5x)\n' \
    "$(echo "(${cold1[1]} + ${cold1[2]} + ${cold1[3]}) / $FLOOR_GZIP" | bc -l)" "$(echo "(${cold2[1]} + ${cold2[2]} + ${cold2[3]}) / $FLOOR_GZIP" | bc -l)" \
    "$FLOOR_FILES" "$FLOOR_BYTES" "$FLOOR_GZIP"
}

start "$REGISTRY" "$BENCH_TMP/registry.log" "second node, registry on loopback"
start_shaped_registry
start "$SHAPED" "$SHAPED_LOG" "second node, registry in its own netns behind veth, tbf 1 Gbit/s, $DELAY each way"
