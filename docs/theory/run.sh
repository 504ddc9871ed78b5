#!/usr/bin/env bash
# The studies of docs/theory/README.md: trains two small resnet18 checkpoints (skipped when they
# exist), then runs pnn fit-conv and pnn noise-stats on them. From the repository root:
#   docs/theory/run.sh [studies folder, default /tmp/pnn-studies] [data root, default ../shared/data]
# About 40 minutes on 2 cores, most of it the CIFAR-10 training.
set -euo pipefail
P=./target/release/pnn
S=${1:-/tmp/pnn-studies}
D=${2:-../shared/data}
OUT=docs/theory
cargo build --release
mkdir -p "$S"
train() { # name, dataset, epochs
  [ -f "$S/$1/checkpoint-last/state.json" ] && return
  $P train --net-type resnet18 --nfilters 44 --dataset-train "$2" --dataset-test "$2" --dataroot "$D" \
    --train-subset 10000 --test-subset 2000 --nepochs "$3" --optim-method Adam --learning-rate 1e-3 \
    --batch-size 32 --save "$S/$1"
}
train mnist-resnet18 MNIST 1
train cifar-resnet18 CIFAR10 2
run() { echo "== $*"; /usr/bin/time -f "%e s, %M KB peak" "$@"; }
M=$S/mnist-resnet18/checkpoint-last
C=$S/cifar-resnet18/checkpoint-last
run $P fit-conv --target "$M" --dataroot "$D" --layer 0 --train_masks --out $OUT/fit-conv-mnist-stem
run $P fit-conv --target "$M" --dataroot "$D" --layer 2 --train-subset 10000 --out $OUT/fit-conv-mnist-layer2
run $P fit-conv --target "$C" --dataroot "$D" --layer 0 --ungrouped --train_masks --train-subset 10000 --out $OUT/fit-conv-cifar-stem
run $P fit-conv --target "$C" --dataroot "$D" --layer 2 --train-subset 10000 --out $OUT/fit-conv-cifar-layer2
run $P noise-stats --target "$M" --dataroot "$D" --images 500 --out $OUT/noise-stats-mnist
run $P noise-stats --target "$C" --dataroot "$D" --images 500 --out $OUT/noise-stats-cifar
# The reproduction's layer groups its 1x1 combination by input channel when nmasks > 1; these
# two let every output see every channel's masks (fewer masks: the features grow as 44 x nmasks).
run $P fit-conv --target "$M" --dataroot "$D" --layer 2 --ungrouped --nmasks 1,2,4,8,16 --train-subset 2000 --out $OUT/fit-conv-mnist-layer2-ungrouped
run $P fit-conv --target "$C" --dataroot "$D" --layer 2 --ungrouped --nmasks 1,2,4,8,16 --train-subset 2000 --out $OUT/fit-conv-cifar-layer2-ungrouped
