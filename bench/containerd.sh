# Shared by the benchmarks that go through containerd (source it after scripts/lib.sh and
# bench/shaped.sh): a containerd of the benchmark's own (its own root, state, sockets and
# config under a directory of $BENCH_TMP, the CRI plugin off, containerd namespace
# clip-bench-PID), optionally with `clip snapshotter` as its proxy snapshotter `clip`, and
# their teardown: tasks and containers of the namespace, containerd, the shims it started and
# the snapshotter by pid, every mount below a directory (clip mounts with `clip umount`, which
# ends their daemons), and what containerd 1.6 leaves of the namespace in /run/containerd
# (it hard-codes /run/containerd/{runc,s,fifo}).
#
#   start_snapshotter DIR     clip snapshotter, root DIR/snapshotter, cache DIR/cache
#   start_containerd DIR [SNAPSHOTTER_SOCKET]
#   ctrd ARGS... / ctrd_remote ARGS...    ctr / ctr-remote against it, in its namespace
#   stop_containerd; stop_snapshotter; unmount_below DIR; containerd_cleanup (all of them)

CTRD_NS=clip-bench-$$
CTRD_PID=""
CTRD_SOCK=""
CTRD_DIR=""
SNAP_PID=""
SNAP_SOCK=""
SNAP_ROOT=""

# start_snapshotter DIR: `clip snapshotter` on DIR/snapshotter/clip.sock, root
# DIR/snapshotter/root, cache DIR/cache (empty: a node that never saw the image), plain HTTP
# to every registry, no mirror configuration of this machine; its log in DIR/snapshotter.log.
# Sets SNAP_PID, SNAP_SOCK, SNAP_ROOT.
start_snapshotter() {
  local dir=$1
  SNAP_SOCK=$dir/snapshotter/clip.sock
  SNAP_ROOT=$dir/snapshotter/root
  mkdir -p "$dir/cache"
  CONTAINERS_REGISTRIES_CONF=/dev/null CLIP_REGISTRY_HOSTS_DIR=/nonexistent \
    RUST_LOG=${RUST_LOG:-clip_snapshotter=info,clip=info} \
    "$CLIP" snapshotter --socket "$SNAP_SOCK" --root "$SNAP_ROOT" --cache-dir "$dir/cache" \
    --insecure </dev/null >/dev/null 2>"$dir/snapshotter.log" &
  SNAP_PID=$!
  for _ in $(seq 300); do
    [ -S "$SNAP_SOCK" ] && return 0
    kill -0 "$SNAP_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "clip snapshotter did not start:" >&2; cat "$dir/snapshotter.log" >&2; return 1
}

stop_snapshotter() {
  [ -n "$SNAP_PID" ] || return 0
  kill -TERM "$SNAP_PID" 2>/dev/null || true
  wait "$SNAP_PID" 2>/dev/null || true
  SNAP_PID=""
}

# start_containerd DIR [SNAPSHOTTER_SOCKET]: containerd with root DIR/containerd/root, state
# DIR/containerd/state, socket DIR/containerd/containerd.sock, its log in DIR/containerd.log;
# with a snapshotter socket, that snapshotter as `[proxy_plugins.clip]`. Sets CTRD_PID,
# CTRD_SOCK, CTRD_DIR.
start_containerd() {
  local dir=$1 snap=${2:-}
  CTRD_DIR=$dir
  CTRD_SOCK=$dir/containerd/containerd.sock
  mkdir -p "$dir/containerd"
  cat > "$dir/containerd.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
TOML
  if [ -n "$snap" ]; then
    printf '[proxy_plugins.clip]\n  type = "snapshot"\n  address = "%s"\n' "$snap" >> "$dir/containerd.toml"
  fi
  containerd --config "$dir/containerd.toml" </dev/null >/dev/null 2>"$dir/containerd.log" &
  CTRD_PID=$!
  for _ in $(seq 600); do
    ctrd version >/dev/null 2>&1 && return 0
    kill -0 "$CTRD_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "containerd did not start:" >&2; tail -20 "$dir/containerd.log" >&2; return 1
}

ctrd() { ctr --address "$CTRD_SOCK" --namespace "$CTRD_NS" "$@"; }
ctrd_remote() { ctr-remote --address "$CTRD_SOCK" --namespace "$CTRD_NS" "$@"; }

# stop_containerd: every task and container of the namespace killed and deleted, containerd
# stopped (SIGTERM, SIGKILL after 20 s), shims it started and that outlived it (their
# -address is its socket) killed by pid, its namespace's runc state in /run/containerd gone.
stop_containerd() {
  [ -n "$CTRD_PID" ] || return 0
  if kill -0 "$CTRD_PID" 2>/dev/null; then
    local t c
    for t in $(ctrd task ls -q 2>/dev/null); do
      ctrd task kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctrd task delete --force "$t" >/dev/null 2>&1 || true
    done
    for c in $(ctrd container ls -q 2>/dev/null); do
      ctrd container delete "$c" >/dev/null 2>&1 || true
    done
    kill -TERM "$CTRD_PID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CTRD_PID" 2>/dev/null || true
  fi
  wait "$CTRD_PID" 2>/dev/null || true
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "-address $CTRD_SOCK "; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  rm -rf "/run/containerd/runc/$CTRD_NS"
  CTRD_PID=""
}

# mounts_below DIR: mount points strictly below DIR, deepest first.
mounts_below() {
  awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' \
    | sort -rn | cut -d' ' -f2-
}

# unmount_below DIR: every mount below DIR, deepest first: first the others (containers'
# overlays, which may stack on clip mounts) with umount, lazily when busy; then the clip
# mounts (fuse) with `clip umount`, which ends their daemons, else fusermount -u.
unmount_below() {
  local m
  for m in $(mounts_below "$1"); do
    case "$(mount_type "$m")" in
      fuse*) ;;
      *) umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true ;;
    esac
  done
  for m in $(mounts_below "$1"); do
    "$CLIP" umount "$m" >/dev/null 2>&1 || fusermount -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

# mount_type MOUNTPOINT: its filesystem type, from /proc/self/mountinfo.
mount_type() {
  awk -v m="$1" '$5 == m {for (i = 7; i <= NF; i++) if ($i == "-") {print $(i + 1); exit}}' /proc/self/mountinfo
}

# containerd_cleanup: all of the above for what is running, and the mounts below $BENCH_TMP.
containerd_cleanup() {
  stop_containerd
  stop_snapshotter
  unmount_below "$BENCH_TMP"
}
