# Shared by the demo and the benchmarks: a throwaway registry on loopback and a layer pusher.
# Source it; it defines start_registry and push_image, and cleans up on exit.

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/clip.XXXXXX")
# Indexes `clip index` keeps, and anything else cached, stay in this run's scratch space.
export CLIP_CACHE_DIR=$BENCH_TMP/clip-cache
REGISTRY_PID=""
cleanup() {
  if [ -n "$REGISTRY_PID" ]; then kill "$REGISTRY_PID" 2>/dev/null; wait "$REGISTRY_PID" 2>/dev/null || true; fi
  rm -rf "$BENCH_TMP"
}
trap cleanup EXIT

# build_clip: builds the release binary (honouring $CARGO_TARGET_DIR); sets CLIP to its path.
build_clip() {
  cargo build --release -q -p clip-cli
  CLIP=${CARGO_TARGET_DIR:-$PWD/target}/release/clip
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_registry [LISTEN_HOST]: starts CNCF Distribution on a free port (on 127.0.0.1 unless
# told otherwise), with its access log in $BENCH_TMP/registry.log; sets REGISTRY=127.0.0.1:PORT
# and REGISTRY_CONFIG (to start another one from).
start_registry() {
  local host=${1:-127.0.0.1} port; port=$(free_port)
  mkdir -p "$BENCH_TMP/registry"
  REGISTRY_CONFIG=$BENCH_TMP/registry.yml
  cat > "$REGISTRY_CONFIG" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $BENCH_TMP/registry
http:
  addr: $host:$port
log:
  level: error
  accesslog:
    disabled: false
YML
  docker-registry serve "$REGISTRY_CONFIG" >"$BENCH_TMP/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY=127.0.0.1:$port
  wait_registry "$REGISTRY" || { cat "$BENCH_TMP/registry.log"; return 1; }
}

# wait_registry ADDR: until the registry answers (bounded).
wait_registry() {
  for _ in $(seq 100); do
    curl -fs "http://$1/v2/" >/dev/null && return 0
    sleep 0.1
  done
  echo "registry at $1 did not start" >&2; return 1
}

# push_blob REPO FILE: monolithic upload; prints the digest.
push_blob() {
  local repo=$1 file=$2 digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location=$(curl -fsS -X POST -D - -o /dev/null "http://$REGISTRY/v2/$repo/blobs/uploads/" \
    | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case "$location" in http*) ;; *) location="http://$REGISTRY$location" ;; esac
  case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$location" >/dev/null
  echo "$digest"
}

# push_image REPO:TAG LAYER.tar.gz...: pushes gzip layers (with their uncompressed sha256 in
# LAYER.diffid) as an OCI image.
push_image() {
  local ref=$1; shift
  local repo=${ref%%:*} tag=${ref##*:}
  local layers_json="" diffids_json="" sep=""
  for layer in "$@"; do
    local d size
    d=$(push_blob "$repo" "$layer")
    size=$(stat -c %s "$layer")
    layers_json+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$size}"
    diffids_json+="$sep\"sha256:$(cat "$layer.diffid")\""
    sep=","
  done
  printf '{"architecture":"amd64","os":"linux","created":"%s","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$diffids_json" > "$BENCH_TMP/config.json"
  local cd csize
  cd=$(push_blob "$repo" "$BENCH_TMP/config.json")
  csize=$(stat -c %s "$BENCH_TMP/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$cd" "$csize" "$layers_json" > "$BENCH_TMP/manifest.json"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$BENCH_TMP/manifest.json" "http://$REGISTRY/v2/$repo/manifests/$tag" >/dev/null
}

# make_layer OUT.tar.gz DIR...: a gzip layer (level 6, like docker) of host directories under /
# (globs are expanded there), with its diff_id (the sha256 of the uncompressed tar) in
# OUT.tar.gz.diffid. A path that matches nothing is an error.
make_layer() {
  local out=$1; shift
  local paths=() p
  for p in $(cd / && for g in "$@"; do printf '%s\n' $g; done); do
    [ -e "/$p" ] || { echo "make_layer: /$p does not exist" >&2; return 1; }
    paths+=("$p")
  done
  tar -C / -cf "$out.tar" --sort=name "${paths[@]}" 2>/dev/null || [ -s "$out.tar" ]
  tar_to_layer "$out"
}

# tar_to_layer OUT.tar.gz: compresses OUT.tar.gz.tar into OUT.tar.gz and records its diff_id.
tar_to_layer() {
  local out=$1
  sha256sum "$out.tar" | cut -d' ' -f1 > "$out.diffid"
  pigz -6 -p "$(nproc)" < "$out.tar" > "$out"
  rm -f "$out.tar"
}
