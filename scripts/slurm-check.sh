#!/usr/bin/env bash
# pnn on a real Slurm: starts a one-node cluster on this machine (scripts/slurm-local.sh), then
#  1. submits a sweep of 4 tiny runs (lenet on generated MNIST-format data) as a job array with
#     its collect job (`pnn sweep ... --slurm FILE --submit`), waits, and checks that every run
#     finished and the collected report lists no missing run;
#  2. submits a longer run as a 1-task array, sends the running task SIGUSR1 (what Slurm's
#     --signal sends ahead of a time limit), and checks that it checkpointed, requeued itself,
#     resumed, and ended with the metrics of the same run left alone.
# Usage: scripts/slurm-check.sh [PNN_BINARY]   (default target/release/pnn)
# Exit status: 0 all checks passed, 1 a check failed, 3 Slurm cannot run here.
set -euo pipefail
cd "$(dirname "$0")/.."
pnn=$(realpath "${1:-target/release/pnn}")
[[ -x $pnn ]] || { echo "no pnn binary at $pnn: build it (cargo build --release)" >&2; exit 1; }

scripts/slurm-local.sh start || exit $?
trap 'scripts/slurm-local.sh stop >/dev/null 2>&1 || true' EXIT

work=$(mktemp -d /tmp/pnn-slurm-check.XXXXXX)
chmod 755 "$work"
echo "working in $work"

# Tiny MNIST-format data: class k is a bright square at a place that depends on k.
python3 - "$work/data" <<'EOF'
import os, struct, sys
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
def idx(path, dims, data):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 + len(dims)))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(bytes(data))
for prefix, n in (("train", 200), ("t10k", 50)):
    labels = [i % 10 for i in range(n)]
    images = bytearray(n * 784)
    for i, k in enumerate(labels):
        r0, c0 = 2 + 2 * k, 4 + (k % 3) * 6
        for r in range(r0, r0 + 4):
            for c in range(c0, c0 + 4):
                images[i * 784 + r * 28 + c] = 255
    idx(f"{root}/{prefix}-images-idx3-ubyte", [n, 28, 28], images)
    idx(f"{root}/{prefix}-labels-idx1-ubyte", [n], labels)
EOF

flags=(--net-type lenet --dataset-train MNIST --dataset-test MNIST --dataroot "$work/data" --no-download
       --nfilters 8 --batch-size 16 --learning-rate 0.05 --device cpu)

# wait_jobs ID...: until none of the jobs is queued or running (at most 10 minutes).
wait_jobs() {
    local ids deadline=$((SECONDS + 600))
    ids=$(IFS=,; echo "$*")
    while squeue -h -j "$ids" 2>/dev/null | grep -q .; do
        ((SECONDS < deadline)) || { echo "FAIL: jobs $ids still queued after 10 minutes"; squeue; return 1; }
        sleep 2
    done
}

failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then echo "pass  $what"; else echo "FAIL  $what"; failed=1; fi
}

# 1. A sweep of 4 runs as an array, and its collect job.
out=$("$pnn" sweep "${flags[@]}" --nepochs 2 --grid level=0.1,0.3 --seeds 2 --out "$work/sweep" \
      --slurm "$work/sweep.sbatch" --max-parallel 2 --time 0:10:00 --submit)
echo "$out"
ids=$(echo "$out" | sed -n 's/.*submitted the array as job \([0-9]*\) and the collect job as \([0-9]*\).*/\1 \2/p')
[[ -n $ids ]] || { echo "FAIL: no job ids in pnn's output"; exit 1; }
# shellcheck disable=SC2086
wait_jobs $ids
finished=$(grep -l '"finished": true' "$work"/sweep/level-*/seed*/summary.json 2>/dev/null | wc -l)
check "array of 4 tasks: $finished of 4 runs finished" test "$finished" -eq 4
check "collect job wrote the report" test -s "$work/sweep/summary.md"
check "collect job found no missing run" bash -c "! grep -q 'not finished' '$work/sweep/slurm/collect.log'"
echo "--- collect.log"; cat "$work/sweep/slurm/collect.log"

# 2. A task asked to stop (SIGUSR1) checkpoints, requeues itself and resumes to the same metrics.
long=(--nepochs 60 --grid level=0.2 --seeds 1)
out=$("$pnn" sweep "${flags[@]}" "${long[@]}" --out "$work/requeue" --slurm "$work/requeue.sbatch" --submit)
array=$(echo "$out" | sed -n 's/.*submitted the array as job \([0-9]*\) and the collect job as \([0-9]*\).*/\1/p')
collect=$(echo "$out" | sed -n 's/.*and the collect job as \([0-9]*\).*/\1/p')
log="$work/requeue/slurm/task-0.log"
deadline=$((SECONDS + 300))
until grep -q 'Epoch 5/60' "$log" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "FAIL: the task did not reach epoch 5"; cat "$log" || true; exit 1; }
    sleep 0.2
done
scancel --signal=USR1 --batch "${array}_0"
echo "sent SIGUSR1 to task ${array}_0"
wait_jobs "$array" "$collect"
"$pnn" train "${flags[@]}" --nepochs 60 --level 0.2 --manual-seed 1 --save "$work/alone" > "$work/alone.log"
same=$(python3 - "$work/requeue/level-0.2/seed1/metrics.jsonl" "$work/alone/metrics.jsonl" <<'EOF'
import json, sys
def rows(p):
    out = []
    for line in open(p):
        r = json.loads(line)
        for k in ("epoch_seconds", "train_images_per_sec"):
            r.pop(k, None)
        out.append(r)
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
print("yes" if a == b and len(a) == 60 else f"no ({len(a)} and {len(b)} epochs)")
EOF
)
check "the task stopped on SIGUSR1 with a checkpoint" grep -q 'training stopped on request' "$log"
check "the task requeued itself" grep -q 'requeueing Slurm job' "$log"
check "the requeued task resumed" grep -q 'resum' <(sed -n '/requeueing Slurm job/,$p' "$log")
check "the requeued run's 60 epochs equal the run left alone's: $same" test "$same" = yes
echo "--- task log (first and last lines)"; head -5 "$log"; echo ...; tail -3 "$log"
[[ $failed == 0 ]] && rm -rf "$work"
exit $failed
