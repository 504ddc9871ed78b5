#!/usr/bin/env bash
# Fuzzes the data loaders: IDX (MNIST), CIFAR binary records, image folders (PNG/JPEG).
# Usage: fuzz/run.sh [seconds per target, default 600] [targets...]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts from
# fuzz/seeds/<target> and keeps what it learns in fuzz/corpus/<target> (not committed); a crash
# is written to fuzz/artifacts/<target>/ and belongs in tests/fuzz_regressions.rs once fixed.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("${@:-idx cifar folder}")
for target in ${targets[@]}; do
  mkdir -p "corpus/$target"
  echo "== $target: $seconds s"
  cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|==|SUMMARY|Done)|panicked|ERROR" || true
done
