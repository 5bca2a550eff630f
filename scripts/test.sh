#!/usr/bin/env bash
# The test suite: unit tests, then the integration tiers against a real loopback registry.
# Run as root on a Debian machine after scripts/setup-debian.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker-registry skopeo umoci htpasswd; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup-debian.sh" >&2; exit 1; }
done
cargo test --workspace --all-targets
cargo test --workspace --doc
