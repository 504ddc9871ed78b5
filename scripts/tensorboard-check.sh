#!/usr/bin/env bash
# Reads a pnn run's TensorBoard event files with TensorBoard's own reader and checks that every
# per-epoch scalar equals the run's metrics.jsonl, over a run that was resumed (two event files),
# that the training loss is there every --log-every steps, and that the run's flags are there as
# hyper-parameters.
#
# Installs the `tensorboard` Python package into a virtual environment first
# ($PNN_TENSORBOARD_VENV, default target/tensorboard-venv). Exit status 3 when it cannot be
# installed (no network), so that CI can say so and go on; any other failure is 1.
#
#   scripts/tensorboard-check.sh [pnn binary, default target/debug/pnn]
set -euo pipefail
cd "$(dirname "$0")/.."
pnn=${1:-target/debug/pnn}
[ -x "$pnn" ] || cargo build --locked --bin pnn >&2
venv=${PNN_TENSORBOARD_VENV:-target/tensorboard-venv}
if ! "$venv/bin/python" -c 'import tensorboard' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet tensorboard >&2 || {
    echo "tensorboard-check: the tensorboard package could not be installed" >&2; exit 3; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A tiny MNIST-layout data set: class k is a bright square at a place that depends on k.
"$venv/bin/python" - "$work/data" <<'PY'
import os, struct, sys
root = sys.argv[1]
os.makedirs(root)
for prefix, n in [("train", 120), ("t10k", 40)]:
    images, labels = bytearray(n * 784), bytes(i % 10 for i in range(n))
    for i, k in enumerate(labels):
        for r in range(2 + 2 * k, 6 + 2 * k):
            for c in range(4 + (k % 3) * 6, 8 + (k % 3) * 6):
                images[i * 784 + r * 28 + c] = 255
    with open(f"{root}/{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images)
    with open(f"{root}/{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels)
PY

flags=(--net-type lenet --dataset-train MNIST --dataset-test MNIST --dataroot "$work/data" --nfilters 8
       --batch-size 16 --learning-rate 0.05 --use_act --device cpu --save "$work/run" --log-every 5)
"$pnn" train "${flags[@]}" --nepochs 1 >/dev/null
sleep 1 # a second file name for the resumed invocation
"$pnn" train "${flags[@]}" --nepochs 3 --resume "$work/run/checkpoint-last" >/dev/null

"$venv/bin/python" - "$work/run" <<'PY'
import glob, json, math, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

run = sys.argv[1]
files = glob.glob(f"{run}/events.out.tfevents.*")
assert len(files) == 2, f"one event file per invocation, found {files}"
records = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
acc = EventAccumulator(run, size_guidance={"scalars": 0})
acc.Reload()
tags = {
    "accuracy/test_correct": "test_acc",
    "accuracy/test_reported_by_original_code": "test_acc_reported",
    "accuracy/train": "train_acc",
    "loss/test": "test_loss",
    "loss/train": "train_loss",
    "learning_rate": "learning_rate",
    "speed/train_images_per_sec": "train_images_per_sec",
}
assert sorted(acc.Tags()["scalars"]) == sorted([*tags, "loss/train_step"]), acc.Tags()["scalars"]
# 120 images in batches of 16: 8 steps an epoch, 24 in all; every 5th, across the resume.
steps = acc.Scalars("loss/train_step")
assert [e.step for e in steps] == [5, 10, 15, 20], [e.step for e in steps]
assert all(0 < e.value < 10 for e in steps), [e.value for e in steps]
for tag, key in tags.items():
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [r["epoch"] for r in records], (tag, [e.step for e in events])
    for e, r in zip(events, records):
        assert math.isclose(e.value, r[key], rel_tol=1e-6, abs_tol=1e-6), (tag, e.step, e.value, r[key])
content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
data = plugin_data_pb2.HParamsPluginData.FromString(content)
hparams = data.session_start_info.hparams
assert hparams["net_type"].string_value == "lenet", hparams["net_type"]
assert hparams["nfilters"].number_value == 8 and hparams["use_act"].bool_value, hparams
print(f"tensorboard-check: {len(records)} epochs x {len(tags)} scalars over {len(files)} event files "
      f"equal metrics.jsonl; {len(hparams)} flags as hyper-parameters")
PY
