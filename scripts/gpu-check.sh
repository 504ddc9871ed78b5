#!/usr/bin/env bash
# The GPU check: pnn on a real NVIDIA GPU through CUDA and through Vulkan, beside PyTorch (CUDA) on
# the same GPU.
#
#   scripts/gpu-check.sh prepare    here (x86_64; no GPU needed; about an hour on 2 cores). Installs
#                                   LLVM and libdevice (scripts/setup-cuda-build.sh), then builds,
#                                   stripped and xz-compressed, into folders that are git-ignored
#                                   locally (.git/info/exclude) and travel with a device call as `carry`:
#                                     .gpu/        pnn --features vulkan,cuda (one binary for both APIs,
#                                                  burn's autotune included) and libdevice;
#                                     .gpu-tests/  the GPU tests (tests/gpu.rs), the same features;
#                                     .gpu-fuse/   pnn --features vulkan,cuda,gpu-fusion;
#                                     .gpu-data/   CIFAR-10 (the JPEG archive of ../shared/data);
#                                     .gl/         the Vulkan loader's Debian packages.
#                                   A bundle whose `stamp` matches the committed sources and features is
#                                   kept, not rebuilt: a machine without a GPU can prepare them ahead.
#                                   A call carries 64 MiB at most: `prepare` prints each folder's size.
#   scripts/gpu-check.sh tests      the GPU tests on CUDA, then on Vulkan (about 2 minutes):
#                                     run(command="scripts/gpu-check.sh tests", carry=[".gpu", ".gpu-tests", ".gl"], timeout_s=300)
#   scripts/gpu-check.sh run        on the GPU machine, as one device call, at most about 9 minutes:
#                                     run(command="scripts/gpu-check.sh run", carry=[".gpu", ".gpu-data", ".gl"], timeout_s=570)
#                                   1. the GPU tests, when .gpu-tests is carried too;
#                                   2. images/s, peak GPU memory and the first step's time (compiling and
#                                      tuning) for the experiment table's commands at batch 16 and 64:
#                                      pnn on CUDA, pnn on Vulkan and PyTorch (CUDA), one after the other,
#                                      and what the whole 150-epoch table would take on this GPU with each;
#                                   2b. command 7 data parallel on the one GPU opened twice (Vulkan),
#                                      beside one device: what the replicas and transfers cost;
#                                   3. 2 epochs of perturb_resnet18 --first_filter_size 3 --filter_size 0
#                                      --nmasks 64 --no-unique_masks on CIFAR-10 through CUDA, with both
#                                      accuracies, on as much of the training set as the time left allows.
#                                   Everything lands in $OUT (gpu-check.md and the logs).
#   scripts/gpu-check.sh probe      a 1-2 minute first look (see probe_half).
#   scripts/gpu-check.sh profile    kernel-by-kernel GPU time of a step (see profile_half).
#   scripts/gpu-check.sh tune       burn's operation fusion (.gpu-fuse) against the default build and
#                                   PyTorch (see tune_half).
# GPU_CHECK_DEVICE (cuda) is the device of the probe, profile, tune and training halves. Limits of
# the run half can be set: GPU_CHECK_STEPS (5), GPU_CHECK_ROW_SECONDS (90: one process, tuning
# included), GPU_CHECK_TEST_SECONDS (150), GPU_CHECK_BENCH_END (400) and GPU_CHECK_TRAIN_END
# (520): seconds from the start by which the table stops and the training run is stopped
# (cleanly, with its checkpoint), GPU_CHECK_TRAIN_SUBSET (50000): the most training images.
# burn's autotune keeps its choices on disk (target/environment/ under this folder), so a kernel
# shape tuned by one process is not tuned again by the next.
set -uo pipefail
cd "$(dirname "$0")/.."

# What a bundle is built from: the git objects of every build input, and the features. Empty when
# a build input has uncommitted changes (then no bundle counts as up to date).
source_stamp() {
  local inputs=(src tests assets Cargo.toml Cargo.lock build.rs)
  [ -z "$(git status --porcelain -- "${inputs[@]}")" ] || return 0
  printf 'features %s\nsource %s\n' "$1" "$(git rev-parse "${inputs[@]/#/HEAD:}" | sha1sum | cut -c1-40)"
}

# Builds `what` (pnn or gpu-tests) with `features`, stripped and compressed into folder `dir`,
# unless `dir` holds a bundle of the same sources and features already (its `stamp`): bundles
# prepared ahead on a machine without a GPU are used as they are, without the hour of building.
# `dir/stamp` also names the commit, for the report.
bundle() {
  local what=$1 features=$2 dir=$3 bin stamp
  stamp=$(source_stamp "$features")
  if [ -n "$stamp" ] && [ -f "$dir/stamp" ] && [ "$(head -2 "$dir/stamp")" = "$stamp" ] && [ -f "$dir/$what.xz" ]; then
    echo "$dir: up to date ($(tail -1 "$dir/stamp")), not rebuilt"
    return 0
  fi
  rm -f "$dir/stamp"
  if [ "$what" = pnn ]; then
    cargo build --release --features "$features"
    bin=target/release/pnn
  else
    cargo test --release --features "$features" --test gpu --no-run 2>&1 | tee /tmp/gpu-test-build.log
    bin=$(grep -o 'target/release/deps/gpu-[0-9a-f]*' /tmp/gpu-test-build.log | tail -1)
  fi
  mkdir -p "$dir"
  grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude
  strip -o "/tmp/bundle-$what" "$bin"
  xz -T2 -9 -c "/tmp/bundle-$what" > "$dir/$what.xz"
  if [ -n "$stamp" ]; then
    printf '%s\ncommit %s\n' "$stamp" "$(git rev-parse --short=12 HEAD)" > "$dir/stamp"
  fi
}

prepare() {
  set -e
  scripts/setup-cuda-build.sh
  # The fusion build first, so that target/release/pnn is the default build afterwards.
  bundle pnn vulkan,cuda,gpu-fusion .gpu-fuse
  bundle gpu-tests vulkan,cuda .gpu-tests
  bundle pnn vulkan,cuda .gpu
  # libdevice, which the CUDA backend reads when it compiles a kernel that calls exp, tanh or erf.
  mkdir -p .gpu/cuda/nvvm/libdevice
  cp "${PNN_CUDA_TOOLS:-${XDG_DATA_HOME:-$HOME/.local/share}/pnn-cuda}/cuda/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc" \
    .gpu/cuda/nvvm/libdevice/
  mkdir -p .gpu-data .gl
  for dir in .gpu-data .gl; do grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude; done
  cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
  if [ "$(ls .gl/*.deb 2>/dev/null | wc -l)" -ge 7 ]; then
    echo ".gl: the Vulkan loader's packages are there, not downloaded again"
  else
    download_loader
  fi
  du -sh .gpu .gpu-tests .gpu-fuse .gpu-data .gl
  echo "ready (a call carries 64 MiB at most):"
  echo "  run(command=\"scripts/gpu-check.sh tests\", carry=[\".gpu\", \".gpu-tests\", \".gl\"], timeout_s=300)"
  echo "  run(command=\"scripts/gpu-check.sh run\", carry=[\".gpu\", \".gpu-data\", \".gl\"], timeout_s=570)"
}

# The Vulkan loader's Debian packages, into .gl.
download_loader() {
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $o update > /dev/null
  # shellcheck disable=SC2086
  # The loader, and libglvnd's dispatch libraries that the NVIDIA driver's Vulkan library links
  # against (without them the loader finds the driver's manifest but no adapter).
  (cd .gl && apt-get $o download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2)
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

# The commit each carried bundle was built from (its stamp; the device machine has no .git).
bundle_commits() {
  local dir
  for dir in .gpu .gpu-tests .gpu-fuse; do
    [ -d "$dir" ] || continue
    printf '%s %s; ' "$dir" "$( (tail -1 "$dir/stamp" 2>/dev/null || echo 'commit unknown (no stamp)') )"
  done
}

# The device of the probe, profile, tune and training halves.
device=${GPU_CHECK_DEVICE:-cuda}

# On the GPU machine: the Vulkan loader (carried as Debian packages), the NVIDIA driver's Vulkan
# manifest, libdevice for CUDA, and the binaries unpacked into /tmp: /tmp/pnn from .gpu,
# /tmp/gpu-tests from .gpu-tests, /tmp/pnn-fusion from .gpu-fuse, for the folders the call carried.
setup() {
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  if [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  fi
  if [ -z "${CUDA_PATH:-}" ] && [ -f .gpu/cuda/nvvm/libdevice/libdevice.10.bc ]; then
    CUDA_PATH=$(pwd)/.gpu/cuda
    export CUDA_PATH
  fi
  # The GPU tests fail, rather than skip, when no device opens.
  export PNN_REQUIRE_GPU=1
  # The binaries travel compressed; Python's lzma unpacks them where xz is not installed.
  local dir bin name
  for dir in .gpu .gpu-tests .gpu-fuse; do
    for bin in pnn gpu-tests; do
      [ -f "$dir/$bin.xz" ] || continue
      name=$bin
      [ "$dir" = .gpu-fuse ] && name=$bin-fusion
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$dir/$bin.xz" "/tmp/$name" && chmod +x "/tmp/$name"
    done
  done
}

# The GPU tests on CUDA, then on Vulkan, into $OUT/gpu-tests-*.log, with a markdown summary on
# standard output.
#   run(command="scripts/gpu-check.sh tests", carry=[".gpu", ".gpu-tests", ".gl"], timeout_s=300)
tests_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  setup
  gpu_tests "$out" "${GPU_CHECK_TEST_SECONDS:-150}" | tee "$out/gpu-tests.md"
}

# Runs /tmp/gpu-tests on cuda then vulkan, `limit` seconds each at most, and prints the results.
gpu_tests() {
  local out=$1 limit=$2 api started
  if [ ! -x /tmp/gpu-tests ]; then
    echo "not run: .gpu-tests was not carried"
    return 0
  fi
  for api in cuda vulkan; do
    started=$SECONDS
    PNN_TEST_DEVICE=$api timeout "$limit" /tmp/gpu-tests --test-threads 1 > "$out/gpu-tests-$api.log" 2>&1
    echo "### $api: exit status $? after $((SECONDS - started)) s (124: stopped by the time limit)"
    echo '```'
    grep -E '^test |test result|panicked' "$out/gpu-tests-$api.log" | head -16
    echo '```'
  done
}

# A short first look (about 2 minutes): do CUDA and Vulkan open the GPU, and how long do the
# heaviest rows take (on GPU_CHECK_DEVICE), to size the full run. GPU_CHECK_PROBE_ROWS picks the
# rows (index into bench/commands.sh:batch, default 0:64,6:16,6:64); GPU_CHECK_PROBE_TORCH=0
# leaves PyTorch out.
#   run(command="scripts/gpu-check.sh probe", carry=[".gpu", ".gl"], timeout_s=240)
probe_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  setup
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ldconfig -p | grep -iE 'vulkan|libcuda'
    ls /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ 2>&1
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset} CUDA_PATH=${CUDA_PATH:-unset}"
    ldd /tmp/pnn | grep -i 'not found'
    grep library_path "${VK_DRIVER_FILES:-/usr/share/vulkan/icd.d/nvidia_icd.json}"
    ls /usr/local/nvidia/lib64 2>/dev/null | grep -iE 'glx|vulkan|GLdispatch|cuda' | tr '\n' ' '; echo
  } 2>&1 | tee "$out/probe.log"
  local t0 api
  for api in cuda vulkan; do
    t0=$SECONDS
    VK_LOADER_DEBUG=error,warn timeout 60 /tmp/pnn bench --device "$api" --net-type lenet --nfilters 16 --first_filter_size 0 \
      --filter_size 0 --batch-size 16 --steps 2 --warmup 1 2>&1 | tee -a "$out/probe.log"
    echo "first $api bench: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/probe.log"
  done
  local specs
  IFS=, read -ra specs <<< "${GPU_CHECK_PROBE_ROWS:-0:64,6:16,6:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]}
    t0=$SECONDS
    with_gpu_memory timeout 60 /tmp/pnn bench --device "$device" $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 | tail -5 | tee -a "$out/probe.log"
    echo "pnn ($device) row $((i + 1)) batch $b: $((SECONDS - t0)) s" | tee -a "$out/probe.log"
    [ "${GPU_CHECK_PROBE_TORCH:-1}" = 1 ] || continue
    t0=$SECONDS
    with_gpu_memory timeout 40 python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 | tail -4 | tee -a "$out/probe.log"
    echo "torch row $((i + 1)) batch $b: $((SECONDS - t0)) s" | tee -a "$out/probe.log"
  done
}

# "A.BCx", the first images/s over the second, or "-" where either is missing.
speed_ratio() {
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-"}'
}

# One measurement: "images/s|GPU MiB|first step s" of a bench command (empty fields if it failed).
measure() {
  local log=$1 limit=$2; shift 2
  local o
  o=$(with_gpu_memory timeout "$limit" "$@" 2>&1)
  { echo "\$ $*"; echo "$o"; echo; } >> "$log"
  local ips mem first
  ips=$(awk '/training step:/ {print $3}' <<< "$o")
  mem=$(awk '/gpu-peak-mib:/ {print $2}' <<< "$o")
  first=$(awk '/first step:/ {print $3}' <<< "$o")
  echo "${ips}|${mem}|${first}"
}

# Where the GPU step's time goes, kernel by kernel (about 2 minutes):
#   run(command="scripts/gpu-check.sh profile", carry=[".gpu", ".gl"], timeout_s=300)
# For each row of GPU_CHECK_PROFILE_ROWS (index into bench/commands.sh:batch, default resnet18
# and commands 7 and 8 at batch 64), on GPU_CHECK_DEVICE: a plain bench, which also fills burn's
# autotune cache (GPU_CHECK_PROFILE_FILL seconds, default 240), then the same bench with every
# kernel timed (CUBECL_DEBUG_OPTION=profile: each launch waits for the GPU, so that run is
# slower), summed by kernel with scripts/kernel_times.py into $OUT/kernels-*.md.
profile_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  setup
  local specs spec
  IFS=, read -ra specs <<< "${GPU_CHECK_PROFILE_ROWS:-0:64,6:64,7:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]} name="kernels-$device-$((i + 1))-b$b"
    {
      echo "# Command $((i + 1)) at batch $b on $device: \`$flags\`"
      echo
      echo '```'
      timeout "${GPU_CHECK_PROFILE_FILL:-240}" /tmp/pnn bench --device "$device" $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 \
        | grep -E 'training step|first step|error'
      echo '```'
      echo
    } > "$out/$name.md"
    rm -f "/tmp/$name.log"
    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="/tmp/$name.log" timeout 90 \
      /tmp/pnn bench --device "$device" $flags --batch-size "$b" --steps 2 --warmup 0 > /dev/null 2>&1
    echo "Every kernel timed over 2 steps (the autotune cache filled by the run above):" >> "$out/$name.md"
    echo >> "$out/$name.md"
    python3 scripts/kernel_times.py "/tmp/$name.log" --top 30 >> "$out/$name.md" 2>&1
    # The raw log too (compressed), in case the summary's parsing missed its format.
    gzip -c "/tmp/$name.log" > "$out/$name.log.gz"
    cat "$out/$name.md"
  done
}

# What the experiment table's eight commands take for 150 epochs of the 50,000 CIFAR-10 training
# images at the batch-64 rates in column `col` of `rows` (test passes not counted), in hours, or
# "-" where a command's rate is missing.
table_hours() {
  local rows=$1 col=$2
  awk -F'|' -v c="$col" '$1 ~ / 64$/ {n++; if ($c + 0 > 0) {h += 150 * 50000 / $c / 3600; k++}}
    END {if (k == 8) printf "%.1f", h; else printf "- (%d of 8 commands measured)", k}' "$rows"
}

run_half() {
  local t0=$SECONDS
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  local report=$out/gpu-check.md
  setup
  local steps=${GPU_CHECK_STEPS:-5} row_limit=${GPU_CHECK_ROW_SECONDS:-90}
  # Deadlines (seconds from the start) keep the whole run inside one device call: the table
  # stops launching rows at BENCH_END, the training run ends by TRAIN_END.
  local bench_end=${GPU_CHECK_BENCH_END:-400} train_end=${GPU_CHECK_TRAIN_END:-520}
  {
    echo "# pnn on a GPU (CUDA and Vulkan) beside PyTorch (CUDA)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    echo "- PyTorch $(python3 -c 'import torch; print(torch.__version__)'); pnn bundles: $(bundle_commits)"
    echo "- started $(date -u +%FT%TZ)"
    echo
    echo "## 1. GPU tests"
    echo
  } > "$report"
  gpu_tests "$out" "${GPU_CHECK_TEST_SECONDS:-150}" >> "$report"

  {
    echo
    echo "## 2. Training step, synthetic CIFAR-10 data, median of $steps steps after 2 warm-up"
    echo
    echo "Each cell is its own process, in the order PyTorch, pnn CUDA, pnn Vulkan. GPU MiB is the most memory nvidia-smi"
    echo "saw in use during it (context included). 'first s' is pnn's first step: compiling and tuning kernels, less"
    echo "where an earlier process tuned the same shapes (burn keeps the choices on disk)."
    echo
    echo "| # | batch | PyTorch images/s | pnn CUDA images/s | pnn Vulkan images/s | CUDA / PyTorch | Vulkan / PyTorch | PyTorch GPU MiB | CUDA GPU MiB | Vulkan GPU MiB | CUDA first s | Vulkan first s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  } >> "$report"
  # Most telling first, in case time runs out: the 64-mask commands, then the baseline, then the rest.
  local rows=$out/rows.txt spec rate64=""
  : > "$rows"
  for spec in 6:64 0:64 6:16 0:16 5:64 7:64 1:64 2:64 3:64 4:64 5:16 7:16 1:16 2:16 3:16 4:16; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]} left
    left=$((t0 + bench_end - SECONDS))
    if [ "$left" -lt 20 ]; then
      echo "$i $b| $((i + 1)) | $b | not run: out of time |  |  |  |  |  |  |  |  |  |" >> "$rows"
      continue
    fi
    local limit=$((left < row_limit ? left : row_limit)) t c v
    t=$(measure "$out/bench.log" "$limit" python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps "$steps" --warmup 2)
    c=$(measure "$out/bench.log" "$limit" /tmp/pnn bench --device cuda $flags --batch-size "$b" --steps "$steps" --warmup 2)
    v=$(measure "$out/bench.log" "$limit" /tmp/pnn bench --device vulkan $flags --batch-size "$b" --steps "$steps" --warmup 2)
    local t_ips t_mem c_ips c_mem c_first v_ips v_mem v_first
    IFS='|' read -r t_ips t_mem _ <<< "$t"
    IFS='|' read -r c_ips c_mem c_first <<< "$c"
    IFS='|' read -r v_ips v_mem v_first <<< "$v"
    if [ "$i" = 6 ] && [ "$b" = 64 ]; then rate64=$c_ips; fi
    echo "$i $b| $((i + 1)) | $b | ${t_ips:-failed} | ${c_ips:-failed} | ${v_ips:-failed} | $(speed_ratio "$c_ips" "$t_ips") | $(speed_ratio "$v_ips" "$t_ips") | ${t_mem:--} | ${c_mem:--} | ${v_mem:--} | ${c_first:--} | ${v_first:--} |" >> "$rows"
  done
  sort -k1,1n -k2,2n "$rows" | cut -d'|' -f2- | sed 's/^/|/' >> "$report"
  {
    echo
    echo "The whole table, 150 epochs of 50,000 images per command at the batch-64 rates (test passes not counted):"
    echo "PyTorch $(table_hours "$rows" 4) h, pnn CUDA $(table_hours "$rows" 5) h, pnn Vulkan $(table_hours "$rows" 6) h."
    echo
    echo "Commands: bench/commands.sh (the row number is the experiment table's). Table done after $((SECONDS - t0)) s."
    echo
  } >> "$report"

  # Data parallel's own cost: the one GPU opened twice (vulkan and vulkan:0 are two devices
  # there) splits each batch in two, beside the same command on one device. The same GPU does
  # both halves, so this measures the replicas' copies and the gradients' transfer, not a
  # speed-up, which needs two GPUs.
  if [ $((t0 + train_end - SECONDS)) -gt 150 ]; then
    local flags7=${commands[6]} one two
    one=$(measure "$out/bench.log" 60 /tmp/pnn bench --device vulkan $flags7 --batch-size 64 --steps "$steps" --warmup 2)
    two=$(measure "$out/bench.log" 60 /tmp/pnn bench --device vulkan,vulkan:0 $flags7 --batch-size 64 --steps "$steps" --warmup 2)
    {
      echo "Data parallel on the one GPU opened twice (command 7, batch 64, parts of 32, Vulkan): ${two%%|*} images/s,"
      echo "against ${one%%|*} on one device ($(speed_ratio "${two%%|*}" "${one%%|*}")): the cost of the replicas and transfers."
      echo
    } >> "$report"
  fi

  # Two epochs in what is left: the training set is cut to what the measured step rate
  # (command 7 at batch 64) gets through twice, with a test set a fifth of its size.
  local budget=$((t0 + train_end - SECONDS))
  [ "$budget" -lt 60 ] && budget=60
  local subset
  subset=$(awk -v r="${rate64:-0}" -v b="$budget" -v cap="${GPU_CHECK_TRAIN_SUBSET:-50000}" \
    'BEGIN {if (r <= 0) r = 100; s = int(0.7 * (b - 15) * r / 2.2 / 64) * 64; if (s > cap) s = cap; if (s < 640) s = 640; print s}')
  local test_subset=$((subset / 5 < 10000 ? subset / 5 : 10000))
  echo "## 3. Two epochs of perturb_resnet18, 64 shared masks, CIFAR-10, $device ($subset training images, $test_subset test images, $budget s allowed)" >> "$report"
  mkdir -p /tmp/data && tar xzf .gpu-data/cifar10-jpeg.tar.gz -C /tmp/data
  timeout -s INT "$budget" /tmp/pnn train --device "$device" --net-type perturb_resnet18 --nfilters 128 \
    --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --learning-rate 1e-3 --batch-size 64 \
    --nepochs 2 --dataset-train CIFAR10 --dataset-test CIFAR10 --dataroot /tmp/data --no-download \
    --train-subset "$subset" --test-subset "$test_subset" --save /tmp/gpu-run > "$out/train.log" 2>&1
  echo "exit status $? (130: stopped by the time limit, with a checkpoint)" >> "$report"
  echo '```' >> "$report"
  grep -E 'Training|Epoch|Best|stopped|first step|rror' "$out/train.log" | cut -c1-400 >> "$report"
  echo '```' >> "$report"
  cp /tmp/gpu-run/metrics.csv "$out/" 2>/dev/null
  echo "- finished $(date -u +%FT%TZ), $((SECONDS - t0)) s after the start" >> "$report"
  cat "$report"
}

# burn's operation fusion against the default build and PyTorch, about 8 minutes:
#   run(command="scripts/gpu-check.sh tune", carry=[".gpu", ".gpu-fuse", ".gl"], timeout_s=520)
# On GPU_CHECK_DEVICE, for the rows of GPU_CHECK_TUNE_ROWS (default commands 7, 1 and 8 at batch
# 64): PyTorch, the default build, the fusion build. The default build runs first and fills
# burn's autotune cache, which the fusion build shares for the kernels both use. Each pnn row is
# retried while time is left (GPU_CHECK_TUNE_END, 470 s from the start): cubecl writes every tuned
# choice to disk as it goes, so a second process starts where the first was stopped.
tune_half() {
  local t0=$SECONDS out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  local report=$out/tune.md
  setup
  {
    echo "# burn's operation fusion on a GPU ($device), beside the default build and PyTorch (CUDA)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    echo "- PyTorch $(python3 -c 'import torch; print(torch.__version__)'); bundles: $(bundle_commits); started $(date -u +%FT%TZ)"
    echo
    echo "Median of 5 steps after 3 warm-up; a pnn build's try is one process (tuning included)."
    echo
    echo "| # | batch | build | try | exit | wall s | images/s | GPU MiB | first step s |"
    echo "|---|---|---|---|---|---|---|---|---|"
  } > "$report"
  local tune_end=${GPU_CHECK_TUNE_END:-470} spec specs
  IFS=, read -ra specs <<< "${GPU_CHECK_TUNE_ROWS:-6:64,0:64,7:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]} t
    t=$(measure "$out/tune-bench.log" 45 python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps 5 --warmup 3)
    echo "| $((i + 1)) | $b | PyTorch | 1 | - | - | ${t%%|*} | $(cut -d'|' -f2 <<< "$t") | - |" >> "$report"
    local build
    for build in pnn pnn-fusion; do
      [ -x "/tmp/$build" ] || continue
      local try=1
      while :; do
        local left=$((t0 + tune_end - SECONDS))
        [ "$left" -lt 20 ] && break
        local limit=$((left < 180 ? left : 180)) start=$SECONDS m rc
        m=$(measure "$out/tune-bench.log" "$limit" "/tmp/$build" bench --device "$device" $flags --batch-size "$b" --steps 5 --warmup 3)
        rc=$([ -n "${m%%|*}" ] && echo 0 || echo 1)
        echo "| $((i + 1)) | $b | $build | $try | $rc | $((SECONDS - start)) | ${m%%|*} | $(cut -d'|' -f2 <<< "$m") | $(cut -d'|' -f3 <<< "$m") |" >> "$report"
        [ "$rc" = 0 ] && break
        try=$((try + 1))
      done
    done
  done
  echo >> "$report"
  echo "- finished $(date -u +%FT%TZ), $((SECONDS - t0)) s after the start" >> "$report"
  cat "$report"
}

case "${1:-}" in
  prepare) prepare ;;
  tests) tests_half ;;
  probe) probe_half ;;
  profile) profile_half ;;
  run) run_half ;;
  tune) tune_half ;;
  *) echo "usage: scripts/gpu-check.sh prepare | tests | probe | profile | run | tune (see the header of $0)" >&2; exit 2 ;;
esac
