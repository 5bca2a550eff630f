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
  busybox-static    # the demo image's userland
  time              # peak memory in the benchmark
  jq                # the demo script reads clip's JSON
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
# The package starts a system registry on :5000; the tests start their own and need none.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
