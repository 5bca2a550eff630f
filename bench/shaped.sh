# Shared by the benchmarks (source it after scripts/lib.sh): timing helpers, bytes served by a
# registry, and a registry behind a shaped link.

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }

# registry_bytes LOG: bytes a registry sent with 200 or 206 answers, from its access log.
registry_bytes() {
  awk '$9 ~ /^20[06]$/ {s += $10} END {print s+0}' "$1"
}

# bytes_matching LOG SINCE_LINE UNTIL_LINE PATTERN: bytes sent for requests whose path
# matches PATTERN, in the access log's lines after SINCE_LINE up to UNTIL_LINE.
bytes_matching() {
  sed -n "$(($2 + 1)),$3p" "$1" | awk -v p="$4" '$9 ~ /^20[06]$/ && $7 ~ p {s += $10} END {print s+0}'
}

# index_bytes LOG SINCE_LINE UNTIL_LINE IMAGE CACHE_DIR: what a node's start of IMAGE (its
# index in CACHE_DIR's store) fetched of the index, from the registry's access log between the
# two lines; prints "DOWNLOAD WINDOWS": the index download (the referrers tag's index, the
# artifact's manifest and the index's metadata, one range read of exactly its length) and the
# seek windows read by range from the index blob since.
index_bytes() {
  local log=$1 since=$2 until=$3 image=$4 cache=$5 pulled artifact index_file subject blob metadata
  pulled=$("$CLIP" pull --json --insecure --no-index --cache-dir "$cache" "$image")
  [ "$(jq -r .origin.source <<<"$pulled")" = registry ] || { echo "the index did not come from the registry: $pulled" >&2; return 1; }
  artifact=$(jq -r .origin.artifact <<<"$pulled")
  blob=$(jq -r '.origin.blob // empty' <<<"$pulled")
  index_file=$(jq -r .path <<<"$pulled")
  [ -n "$blob" ] || blob=sha256:$(sha256sum "$index_file" | cut -d' ' -f1)
  subject=$("$CLIP" inspect --json "$index_file" | jq -r .image.manifest_digest)
  metadata=$(stat -c %s "$index_file")
  sed -n "$((since + 1)),${until}p" "$log" | awk -v tag="${subject/:/-}" -v art="$artifact" \
    -v blob="${blob#sha256:}" -v meta="$metadata" '
    $9 !~ /^20[06]$/ { next }
    $7 ~ blob { if (!seen && $10 == meta) { seen = 1; d += $10 } else { w += $10 }; next }
    $7 ~ tag || $7 ~ art { d += $10 }
    END { print d+0, w+0 }'
}

# start_shaped_registry: a second registry serving the same storage as start_registry's, in a
# network namespace of its own behind a veth pair shaped to 1 Gbit/s each way with tbf and
# 5 ms each way (netem where the kernel has it, else a delaying TCP proxy in front of the
# namespace, bench/delay_proxy.py). Sets SHAPED (its address), SHAPED_LOG (its access log)
# and DELAY (how the delay is made); stop_shaped_registry takes it all down.
NETNS=""
start_shaped_registry() {
  NETNS=clipbench$$
  ip netns add "$NETNS"
  ip link add clipb0 type veth peer name clipb1
  ip link set clipb1 netns "$NETNS"
  ip addr add 10.201.0.1/24 dev clipb0
  ip link set clipb0 up
  ip netns exec "$NETNS" ip addr add 10.201.0.2/24 dev clipb1
  ip netns exec "$NETNS" ip link set clipb1 up
  ip netns exec "$NETNS" ip link set lo up
  if tc qdisc add dev clipb0 root handle 1: netem delay 5ms 2>/dev/null; then
    ip netns exec "$NETNS" tc qdisc add dev clipb1 root handle 1: netem delay 5ms
    tc qdisc add dev clipb0 parent 1: handle 2: tbf rate 1gbit burst 256kb latency 50ms
    ip netns exec "$NETNS" tc qdisc add dev clipb1 parent 1: handle 2: tbf rate 1gbit burst 256kb latency 50ms
    SHAPED=10.201.0.2:5000
    DELAY="netem 5 ms"
  else
    tc qdisc add dev clipb0 root tbf rate 1gbit burst 256kb latency 50ms
    ip netns exec "$NETNS" tc qdisc add dev clipb1 root tbf rate 1gbit burst 256kb latency 50ms
    local proxy_port; proxy_port=$(free_port)
    python3 bench/delay_proxy.py "$proxy_port" 10.201.0.2:5000 5 > "$BENCH_TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    SHAPED=127.0.0.1:$proxy_port
    DELAY="5 ms by a delaying proxy (no netem in this kernel)"
  fi
  SHAPED_LOG=$BENCH_TMP/registry-ns.log
  sed "s/^  addr: .*/  addr: 10.201.0.2:5000/" "$REGISTRY_CONFIG" > "$BENCH_TMP/registry-ns.yml"
  ip netns exec "$NETNS" docker-registry serve "$BENCH_TMP/registry-ns.yml" >"$SHAPED_LOG" 2>&1 &
  NS_REGISTRY_PID=$!
  wait_registry 10.201.0.2:5000
  wait_registry "$SHAPED"
}

stop_shaped_registry() {
  if [ -z "$NETNS" ]; then return 0; fi
  if [ -n "${NS_REGISTRY_PID:-}" ]; then kill "$NS_REGISTRY_PID" 2>/dev/null || true; fi
  if [ -n "${PROXY_PID:-}" ]; then kill "$PROXY_PID" 2>/dev/null || true; fi
  ip netns del "$NETNS" 2>/dev/null || true
  ip link del clipb0 2>/dev/null || true
  NETNS=""
}
