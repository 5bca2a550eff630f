#!/usr/bin/env bash
# The whole test suite: the hermetic tier (plain `cargo test`: no root, no tools, no network),
# then the integration and privileged tiers, which plain `cargo test` skips as ignored: a real
# CNCF Distribution registry on loopback, images built by the tests, `umoci unpack` as the
# oracle, FUSE, overlayfs, the OCI runtimes (runc, crun, runsc) and containerd (with
# ctr-remote) for the snapshotter. Run as root on a Debian machine after
# scripts/setup-debian.sh; here a missing tool is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh runs the privileged tier: run it as root (plain 'cargo test' runs the rest)" >&2
  exit 1
fi
for tool in docker-registry skopeo umoci htpasswd runc crun runsc script fusermount3 setpriv mkfifo \
    containerd ctr ctr-remote protoc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup-debian.sh" >&2; exit 1; }
done
[ -e /dev/fuse ] || { echo "missing /dev/fuse" >&2; exit 1; }
cargo test --workspace --all-targets -- --include-ignored
cargo test --workspace --doc
