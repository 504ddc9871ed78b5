#!/usr/bin/env bash
# The hand-written CPU operations (fused perturbation layer, convolutions, BatchNorm, pooling) against
# burn's composition, side by side in one run: training-step images/s and peak memory of
# `pnn bench` for each command, with PNN_UNFUSED=1 (burn's operations) and without (the
# kernels), and their ratio.
#
#   bench/fused.sh [batch-size] [steps]        (default: 16, 3)
#
# Synthetic CIFAR-sized data; the two runs of a row follow each other, so a ratio is measured
# under the same conditions. Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-16}
steps=${2:-3}
pnn=./target/release/pnn
[ -x "$pnn" ] || { echo "build first: cargo build --release" >&2; exit 1; }

commands=(
  "--net-type resnet18 --nfilters 44"
  "--net-type noiseresnet18 --nfilters 128 --first_filter_size 3"
  "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 0 --filter_size 0 --nmasks 1"
  "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks"
  "--net-type perturb_resnet18 --nfilters 128 --first_filter_size 3 --filter_size 0 --nmasks 64 --unique_masks --mix_maps"
  "--net-type cifarnet --nfilters 128 --first_filter_size 0 --filter_size 0"
  "--net-type lenet --nfilters 128 --first_filter_size 0 --filter_size 0"
)

measure() { # prints "images/s peak-MiB"
  "$@" 2>&1 | awk '/training step:/ {ips=$3} /peak memory:/ {mem=$3} END {print ips, mem}'
}

printf '| command (batch %s) | unfused images/s | fused images/s | speed-up | unfused MiB | fused MiB | memory ratio |\n' "$batch"
printf '|---|---|---|---|---|---|---|\n'
for flags in "${commands[@]}"; do
  # shellcheck disable=SC2086
  read -r u_ips u_mem < <(PNN_UNFUSED=1 measure "$pnn" bench --device cpu $flags --batch-size "$batch" --steps "$steps" --warmup 1)
  # shellcheck disable=SC2086
  read -r f_ips f_mem < <(measure "$pnn" bench --device cpu $flags --batch-size "$batch" --steps "$steps" --warmup 1)
  awk -v f="$flags" -v ui="$u_ips" -v fi="$f_ips" -v um="$u_mem" -v fm="$f_mem" \
    'BEGIN {printf "| `%s` | %.1f | %.1f | %.1fx | %.0f | %.0f | %.1fx less |\n", f, ui, fi, fi/ui, um, fm, um/fm}'
done
