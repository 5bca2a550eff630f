#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600; .ci/run runs a 15 s smoke of each) and
# prints one line per target. A crash stops the script with the target's output and the input
# that crashed it (under fuzz/artifacts/). Errors are fine, panics are bugs.
#
#   fuzz/run.sh [SECONDS]
#   FUZZ_SANITIZER=none fuzz/run.sh 20     (faster to build; the default is AddressSanitizer,
#                                            which watches the zlib FFI's unsafe code)
#   FUZZ_QUICK=1 fuzz/run.sh 10             (an unoptimised build: half the build time, a
#                                            tenth of the rate; CI's smoke run)
#
# cargo-fuzz wants a nightly compiler; RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain act
# as one. Corpora grow under fuzz/corpus/ (not committed); read_archive's is seeded with valid
# archives of the current format (crates/archive/examples/fuzz_seeds.rs).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
command -v cargo-fuzz >/dev/null || { echo "missing cargo-fuzz: cargo install cargo-fuzz --locked" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
# The same flags for the build and every run (else each run builds again).
build=(--sanitizer "$sanitizer")
[ "${FUZZ_QUICK:-0}" = 1 ] && build+=(--dev)
targets=$(cargo fuzz list)
cargo fuzz build "${build[@]}"
# Valid archives of the current format to start the reader's fuzzing from.
cargo run -q --manifest-path ../Cargo.toml -p clip-archive --example fuzz_seeds -- corpus/read_archive
for target in $targets; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run "${build[@]}" "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    cat "$log" >&2
    echo "fuzz: $target FAILED (see above; the input is under fuzz/artifacts/$target/)" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  printf 'fuzz: %-20s %10s runs in %ss, no crash\n' "$target" "$runs" "$seconds"
  rm -f "$log"
done
