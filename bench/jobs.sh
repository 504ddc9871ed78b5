#!/usr/bin/env bash
# Several small runs at once on one machine: `pnn sweep --jobs 2` (two `pnn train` processes,
# the threads split between them) against `--jobs 1` (one run after the other, each with all the
# threads), on the same two lenet runs. Prints each round's wall time and total training images/s,
# and their ratio; the rounds alternate, so a slow spell of the machine hits both.
#
#   bench/jobs.sh [rounds] [train images per run] [epochs]
#
# Data: MNIST from ../shared/data/mnist (or PNN_MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
images=${2:-10000}
epochs=${3:-1}
data=${PNN_MNIST:-../shared/data/mnist}
pnn=./target/release/pnn
[ -x "$pnn" ] || cargo build --release >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Wall seconds of one sweep of two lenet runs (seeds 1 and 2) with --jobs $1.
sweep() {
  local out="$work/jobs$1-$2" start end
  start=$(date +%s.%N)
  "$pnn" sweep --device cpu --jobs "$1" --seeds 2 --out "$out" \
    --net-type lenet --dataset-train MNIST --dataset-test MNIST --dataroot "$data" --nfilters 32 --use_act \
    --nepochs "$epochs" --train-subset "$images" --test-subset 1000 >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

echo "# pnn sweep: two lenet runs one after the other (--jobs 1) vs at once (--jobs 2)"
echo
echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; pnn $(git rev-parse --short HEAD)$(git diff --quiet || echo +modified)"
echo "- each run: lenet --nfilters 32 on $images MNIST training images, $epochs epoch(s), 1,000 test images"
echo
echo "| round | --jobs 1: s | images/s | --jobs 2: s | images/s | jobs 2 / jobs 1 |"
echo "|---|---|---|---|---|---|"
total=$((2 * images * epochs))
for r in $(seq "$rounds"); do
  one=$(sweep 1 "$r")
  two=$(sweep 2 "$r")
  printf '| %d | %.1f | %.0f | %.1f | %.0f | %.2fx |\n' "$r" "$one" "$(echo "$total / $one" | bc -l)" \
    "$two" "$(echo "$total / $two" | bc -l)" "$(echo "$one / $two" | bc -l)"
done
