#!/usr/bin/env bash
# Installs what clip's tests, demo and benchmarks need on a Debian machine (run as root).
# The Rust toolchain itself is pinned by rust-toolchain.toml and comes from rustup.
set -euo pipefail

packages=(
  docker-registry   # CNCF Distribution: the real registry the tests start on loopback
  skopeo umoci      # copy and unpack images: demo images and the "exact" oracle
  apache2-utils     # htpasswd, for the registry auth tests
  zstd pigz         # layer compression in the benchmark
  fuse3 runc        # the mount and run tiers
  crun runsc        # the other OCI runtimes clip run is tested with (runsc: gVisor)
  util-linux        # `script`, which gives clip run -t a terminal in the tests
  busybox-static    # the demo image's userland
  time              # peak memory in the benchmark
  strace            # the file-granular floor of a start, in the benchmarks
  jq                # the demo script reads clip's JSON
  protobuf-compiler # protoc: the build of containerd-snapshots (clip snapshotter's gRPC types)
  containerd        # clip snapshotter's tests: a real containerd (1.6, with its CRI plugin)
  stargz-snapshotter  # ctr-remote: `image rpull`, a lazy pull through any remote snapshotter
  containernetworking-plugins  # CNI plugins for the CRI plugin's sandboxes
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packages start a system registry on :5000 and a system containerd; the tests start
# their own (own ports, roots, sockets) and need neither.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi
# crun refuses a hybrid cgroup layout (v1 controllers, plus cgroup2 at /sys/fs/cgroup/unified)
# whose cgroup2 hierarchy still has controllers ("cgroups in hybrid mode not supported, drop
# all controllers from cgroupv2"): a host that binds every controller but hugetlb to v1 is
# one. Bind what is left to v1 hierarchies of their own, as systemd's hybrid layout does.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ] &&
   [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    mkdir -p "/sys/fs/cgroup/$c"
    mountpoint -q "/sys/fs/cgroup/$c" || mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" ||
      echo "setup: could not bind the $c controller to cgroup v1; crun may refuse to run" >&2
  done
fi
