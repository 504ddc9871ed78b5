#!/usr/bin/env bash
# The GPU check: pnn on a real GPU through Vulkan, beside PyTorch (CUDA) on the same GPU.
#
#   scripts/gpu-check.sh prepare    here (x86_64; no GPU needed). Builds pnn and the GPU tests with
#                                   --features vulkan into .gpu/ (stripped and xz-compressed: the Vulkan
#                                   build is 80 MB per binary, over the 64 MiB a device call carries,
#                                   and 14 MB compressed), puts the Vulkan loader's
#                                   Debian packages into .gl/, and CIFAR-10 (the JPEG archive of
#                                   ../shared/data) into .gpu/data/. Both folders are git-ignored
#                                   locally (.git/info/exclude) and travel with the device call.
#   scripts/gpu-check.sh run        on the GPU machine, as one device call, about 8 minutes:
#                                     run(command="scripts/gpu-check.sh run", carry=[".gpu", ".gl"], timeout_s=600)
#                                   1. the GPU tests (tests/gpu.rs: every model's loss, logits and input
#                                      gradient on Vulkan against the CPU);
#                                   2. images/s and peak GPU memory for the experiment table's commands at
#                                      batch 16 and 64, pnn (Vulkan) then PyTorch (CUDA), one after the other;
#                                   3. 2 epochs of perturb_resnet18 --first_filter_size 3 --filter_size 0
#                                      --nmasks 64 --no-unique_masks on CIFAR-10, with both accuracies.
#                                   Everything lands in $OUT (gpu-check.md and the logs).
# Limits of the run half can be set: GPU_CHECK_STEPS (5), GPU_CHECK_TRAIN_SUBSET (50000),
# GPU_CHECK_TEST_SUBSET (10000), GPU_CHECK_TRAIN_SECONDS (240: the training run is stopped
# cleanly, with its checkpoint, after this long).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  set -e
  cargo build --release --features vulkan
  cargo test --release --features vulkan --test gpu --no-run 2>&1 | tee /tmp/gpu-test-build.log
  local test_bin
  test_bin=$(grep -o 'target/release/deps/gpu-[0-9a-f]*' /tmp/gpu-test-build.log | tail -1)
  mkdir -p .gpu/data .gl
  grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
  grep -qx '/.gl/' .git/info/exclude || echo /.gl/ >> .git/info/exclude
  strip -o /tmp/pnn-vulkan target/release/pnn
  strip -o /tmp/gpu-tests "$test_bin"
  xz -T2 -6 -c /tmp/pnn-vulkan > .gpu/pnn.xz
  xz -T2 -6 -c /tmp/gpu-tests > .gpu/gpu-tests.xz
  cp ../shared/data/cifar10-jpeg.tar.gz .gpu/data/
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $o update > /dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1)
  du -sh .gpu .gl
  echo "ready: run(command=\"scripts/gpu-check.sh run\", carry=[\".gpu\", \".gl\"], timeout_s=600)"
}

# The experiment table's eight commands (cifarnet and lenet are not in the table).
source bench/commands.sh
commands=("${commands[@]:0:8}")

# Runs a command while sampling the GPU's used memory; prints the command's output, then
# "gpu-peak-mib: N" (the most memory in use on the GPU at any sample, this process's and the
# driver's context included).
with_gpu_memory() {
  local samples
  samples=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$samples" 2>/dev/null &
  local sampler=$!
  "$@" 2>&1
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  echo "gpu-peak-mib: $(sort -n "$samples" | tail -1)"
  rm -f "$samples"
  return $rc
}

run_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  local report=$out/gpu-check.md
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! ls /usr/share/vulkan/icd.d/nvidia* > /dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  # The binaries travel compressed; Python's lzma unpacks them where xz is not installed.
  for bin in pnn gpu-tests; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".gpu/$bin.xz" "/tmp/$bin" && chmod +x "/tmp/$bin"
  done
  local pnn=/tmp/pnn steps=${GPU_CHECK_STEPS:-5}
  {
    echo "# pnn on a GPU (Vulkan) beside PyTorch (CUDA)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    echo "- PyTorch $(python3 -c 'import torch; print(torch.__version__)'); pnn $(git rev-parse --short HEAD 2>/dev/null)"
    echo "- started $(date -u +%FT%TZ)"
    echo
  } > "$report"

  echo "## 1. GPU tests" >> "$report"
  timeout 150 /tmp/gpu-tests --test-threads 1 > "$out/gpu-tests.log" 2>&1
  echo "exit status $? ($(grep -E '^test result' "$out/gpu-tests.log" || echo 'no result line: see gpu-tests.log'))" >> "$report"
  grep -E 'skipped|FAILED|panicked' "$out/gpu-tests.log" | head -5 >> "$report"
  echo >> "$report"

  echo "## 2. Training step, synthetic CIFAR-10 data, median of $steps steps after 2 warm-up" >> "$report"
  echo >> "$report"
  echo "| # | command | batch | PyTorch images/s | pnn images/s | pnn / PyTorch | PyTorch GPU MiB | pnn GPU MiB |" >> "$report"
  echo "|---|---|---|---|---|---|---|---|" >> "$report"
  for i in "${!commands[@]}"; do
    for b in 16 64; do
      local flags=${commands[$i]} p t
      p=$(with_gpu_memory timeout 60 "$pnn" bench --device vulkan $flags --batch-size "$b" --steps "$steps" --warmup 2)
      echo "$p" >> "$out/bench.log"
      t=$(with_gpu_memory timeout 60 python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps "$steps" --warmup 2)
      echo "$t" >> "$out/bench.log"
      local p_ips t_ips p_mem t_mem ratio
      p_ips=$(awk '/training step:/ {print $3}' <<< "$p"); p_mem=$(awk '/gpu-peak-mib:/ {print $2}' <<< "$p")
      t_ips=$(awk '/training step:/ {print $3}' <<< "$t"); t_mem=$(awk '/gpu-peak-mib:/ {print $2}' <<< "$t")
      ratio=$(awk -v a="${p_ips:-0}" -v b="${t_ips:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-"}')
      echo "| $((i + 1)) | \`$flags\` | $b | ${t_ips:-failed} | ${p_ips:-failed} | $ratio | ${t_mem:--} | ${p_mem:--} |" >> "$report"
    done
  done
  echo >> "$report"

  echo "## 3. Two epochs of perturb_resnet18, 64 shared masks, CIFAR-10" >> "$report"
  mkdir -p /tmp/data && tar xzf .gpu/data/cifar10-jpeg.tar.gz -C /tmp/data
  timeout -s INT "${GPU_CHECK_TRAIN_SECONDS:-240}" "$pnn" train --device vulkan --net-type perturb_resnet18 --nfilters 128 \
    --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --learning-rate 1e-3 --batch-size 64 \
    --nepochs 2 --dataset-train CIFAR10 --dataset-test CIFAR10 --dataroot /tmp/data --no-download \
    --train-subset "${GPU_CHECK_TRAIN_SUBSET:-50000}" --test-subset "${GPU_CHECK_TEST_SUBSET:-10000}" \
    --save /tmp/gpu-run > "$out/train.log" 2>&1
  echo "exit status $? (130: stopped by the time limit, with a checkpoint)" >> "$report"
  echo '```' >> "$report"
  grep -E 'Epoch|Best|stopped' "$out/train.log" >> "$report"
  echo '```' >> "$report"
  cp /tmp/gpu-run/metrics.csv "$out/" 2>/dev/null
  echo "- finished $(date -u +%FT%TZ)" >> "$report"
  cat "$report"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run_half ;;
  *) echo "usage: scripts/gpu-check.sh prepare | run (see the header of $0)" >&2; exit 2 ;;
esac
