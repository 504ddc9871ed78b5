#!/usr/bin/env bash
# The GPU check: pnn on a real GPU through Vulkan, beside PyTorch (CUDA) on the same GPU.
#
#   scripts/gpu-check.sh prepare    here (x86_64; no GPU needed). Builds, stripped and xz-compressed (the
#                                   Vulkan build is 80 MB per binary, over the 64 MiB a device call carries,
#                                   and 12-15 MB compressed), into folders that are git-ignored locally
#                                   (.git/info/exclude) and travel with the device call as `carry`:
#                                     .gpu/       pnn and the GPU tests, --features vulkan;
#                                     .gpu-tune/  the same two with --features vulkan,gpu-autotune;
#                                     .gpu-fuse/  the same two with --features vulkan,gpu-autotune,gpu-fusion;
#                                     .gpu-data/  CIFAR-10 (the JPEG archive of ../shared/data);
#                                     .gl/        the Vulkan loader's Debian packages.
#                                   A bundle whose `stamp` matches the committed sources and features is
#                                   kept, not rebuilt: a session without a GPU can prepare for the next one.
#   scripts/gpu-check.sh run        on the GPU machine, as one device call, at most about 9 minutes:
#                                     run(command="scripts/gpu-check.sh run", carry=[".gpu", ".gpu-data", ".gl"], timeout_s=570)
#                                   1. the GPU tests (tests/gpu.rs: the fused layer's CubeCL kernels against
#                                      burn's composition and the CPU's loops; every model's loss, logits and
#                                      input gradient on Vulkan against the CPU);
#                                   2. images/s and peak GPU memory for the experiment table's commands at
#                                      batch 16 and 64, pnn (Vulkan) then PyTorch (CUDA), one after the other,
#                                      and for the 64-mask commands pnn again with burn's composition;
#                                   2b. command 7 data parallel on the one GPU opened twice, beside one
#                                      device: what the replicas and transfers cost;
#                                   3. 2 epochs of perturb_resnet18 --first_filter_size 3 --filter_size 0
#                                      --nmasks 64 --no-unique_masks on CIFAR-10, with both accuracies, on
#                                      as much of the training set as the time left allows.
#                                   Everything lands in $OUT (gpu-check.md and the logs).
#   scripts/gpu-check.sh probe      a 1-2 minute first look (see probe_half).
#   scripts/gpu-check.sh profile    kernel-by-kernel GPU time of a step (see profile_half).
#   scripts/gpu-check.sh tune       burn's autotuning builds (with and without burn's fusion) against the
#                                   default one and PyTorch (see tune_half).
# Limits of the run half can be set: GPU_CHECK_STEPS (5), GPU_CHECK_TEST_SECONDS (120),
# GPU_CHECK_BENCH_END (390) and GPU_CHECK_TRAIN_END (520): seconds from the start by which the
# table stops and the training run is stopped (cleanly, with its checkpoint),
# GPU_CHECK_TRAIN_SUBSET (50000): the most training images.
set -uo pipefail
cd "$(dirname "$0")/.."

# What a bundle is built from: the git objects of every build input, and the features. Empty when
# a build input has uncommitted changes (then no bundle counts as up to date).
source_stamp() {
  local inputs=(src tests assets Cargo.toml Cargo.lock build.rs)
  [ -z "$(git status --porcelain -- "${inputs[@]}")" ] || return 0
  printf 'features %s\nsource %s\n' "$1" "$(git rev-parse "${inputs[@]/#/HEAD:}" | sha1sum | cut -c1-40)"
}

# Builds pnn and the GPU test binary with `features`, stripped and compressed into folder `dir`,
# unless `dir` holds a bundle of the same sources and features already (its `stamp`): a session
# that prepared the bundles leaves them for the next one with a GPU, which then skips the
# 45-60 minutes of building. `dir/stamp` also names the commit, for the report.
bundle() {
  local features=$1 dir=$2 test_bin stamp
  stamp=$(source_stamp "$features")
  if [ -n "$stamp" ] && [ -f "$dir/stamp" ] && [ "$(head -2 "$dir/stamp")" = "$stamp" ] \
    && [ -f "$dir/pnn.xz" ] && [ -f "$dir/gpu-tests.xz" ]; then
    echo "$dir: up to date ($(tail -1 "$dir/stamp")), not rebuilt"
    return 0
  fi
  rm -f "$dir/stamp"
  cargo build --release --features "$features"
  cargo test --release --features "$features" --test gpu --no-run 2>&1 | tee /tmp/gpu-test-build.log
  test_bin=$(grep -o 'target/release/deps/gpu-[0-9a-f]*' /tmp/gpu-test-build.log | tail -1)
  mkdir -p "$dir"
  grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude
  strip -o /tmp/bundle-pnn target/release/pnn
  strip -o /tmp/bundle-tests "$test_bin"
  xz -T2 -6 -c /tmp/bundle-pnn > "$dir/pnn.xz"
  xz -T2 -6 -c /tmp/bundle-tests > "$dir/gpu-tests.xz"
  if [ -n "$stamp" ]; then
    printf '%s\ncommit %s\n' "$stamp" "$(git rev-parse --short=12 HEAD)" > "$dir/stamp"
  fi
}

prepare() {
  set -e
  # The autotuning builds first, so that target/release/pnn is the default build afterwards.
  bundle vulkan,gpu-autotune,gpu-fusion .gpu-fuse
  bundle vulkan,gpu-autotune .gpu-tune
  bundle vulkan .gpu
  mkdir -p .gpu-data .gl
  for dir in .gpu-data .gl; do grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >> .git/info/exclude; done
  cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
  if [ "$(ls .gl/*.deb 2>/dev/null | wc -l)" -ge 7 ]; then
    echo ".gl: the Vulkan loader's packages are there, not downloaded again"
  else
    download_loader
  fi
  du -sh .gpu .gpu-tune .gpu-fuse .gpu-data .gl
  echo "ready: run(command=\"scripts/gpu-check.sh run\", carry=[\".gpu\", \".gpu-data\", \".gl\"], timeout_s=570)"
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
  for dir in .gpu .gpu-tune .gpu-fuse; do
    [ -f "$dir/pnn.xz" ] || continue
    printf '%s %s; ' "$dir" "$( (tail -1 "$dir/stamp" 2>/dev/null || echo 'commit unknown (no stamp)') )"
  done
}

# On the GPU machine: the Vulkan loader (carried as Debian packages), the NVIDIA driver's Vulkan
# manifest, and the two binaries unpacked into /tmp.
setup() {
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  if [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  fi
  # The GPU tests fail, rather than skip, when no Vulkan device opens.
  export PNN_REQUIRE_GPU=1
  # The binaries travel compressed; Python's lzma unpacks them where xz is not installed.
  # /tmp/pnn and /tmp/gpu-tests from .gpu, /tmp/pnn-autotune and /tmp/gpu-tests-autotune from
  # .gpu-tune, /tmp/pnn-fusion and /tmp/gpu-tests-fusion from .gpu-fuse, for the folders the call
  # carried.
  local dir bin suffix
  for dir in .gpu .gpu-tune .gpu-fuse; do
    suffix=${dir#.gpu}; suffix=${suffix/-tune/-autotune}; suffix=${suffix/-fuse/-fusion}
    for bin in pnn gpu-tests; do
      [ -f "$dir/$bin.xz" ] || continue
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$dir/$bin.xz" "/tmp/$bin$suffix" && chmod +x "/tmp/$bin$suffix"
    done
  done
}

# A short first look (about 2 minutes): does Vulkan open the GPU, do the GPU tests pass, and how
# long do the heaviest rows take, to size the full run. GPU_CHECK_PROBE_ROWS picks the rows
# (index into bench/commands.sh:batch, default 0:64,6:16,6:64); GPU_CHECK_PROBE_TORCH=0 leaves
# PyTorch out.
#   run(command="scripts/gpu-check.sh probe", carry=[".gpu", ".gl"], timeout_s=240)
probe_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  setup
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ldconfig -p | grep -i vulkan
    ls /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ 2>&1
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}"
    ldd /tmp/pnn | grep -i 'not found'
    grep library_path "${VK_DRIVER_FILES:-/usr/share/vulkan/icd.d/nvidia_icd.json}"
    ls /usr/local/nvidia/lib64 2>/dev/null | grep -iE 'glx|vulkan|GLdispatch' | tr '\n' ' '; echo
  } 2>&1 | tee "$out/probe.log"
  local t0=$SECONDS
  VK_LOADER_DEBUG=error,warn timeout 40 /tmp/pnn bench --device vulkan --net-type lenet --nfilters 16 --first_filter_size 0 --filter_size 0 \
    --batch-size 16 --steps 2 --warmup 1 2>&1 | tee -a "$out/probe.log"
  echo "first Vulkan bench: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/probe.log"
  t0=$SECONDS
  timeout 90 /tmp/gpu-tests --test-threads 1 > "$out/gpu-tests.log" 2>&1
  echo "GPU tests: exit $?, $((SECONDS - t0)) s" | tee -a "$out/probe.log"
  grep -E '^test |test result|skipped|panicked' "$out/gpu-tests.log" | head -20 | tee -a "$out/probe.log"
  local specs
  IFS=, read -ra specs <<< "${GPU_CHECK_PROBE_ROWS:-0:64,6:16,6:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]}
    t0=$SECONDS
    with_gpu_memory timeout 40 /tmp/pnn bench --device vulkan $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 | tail -4 | tee -a "$out/probe.log"
    echo "pnn row $((i + 1)) batch $b: $((SECONDS - t0)) s" | tee -a "$out/probe.log"
    [ "${GPU_CHECK_PROBE_TORCH:-1}" = 1 ] || continue
    t0=$SECONDS
    with_gpu_memory timeout 40 python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 | tail -4 | tee -a "$out/probe.log"
    echo "torch row $((i + 1)) batch $b: $((SECONDS - t0)) s" | tee -a "$out/probe.log"
  done
}

# Runs a GPU test binary within `limit` seconds into `log`, and appends its exit status, time and
# results to `report` as markdown.
tests_into_report() {
  local bin=$1 limit=$2 log=$3 report=$4 started=$SECONDS
  timeout "$limit" "$bin" --test-threads 1 > "$log" 2>&1
  echo "exit status $? after $((SECONDS - started)) s (124: stopped by the time limit)" >> "$report"
  echo '```' >> "$report"
  grep -E '^test |test result|panicked' "$log" | head -12 >> "$report"
  echo '```' >> "$report"
}

# "A.BCx", the first images/s over the second, or "-" where either is missing.
speed_ratio() {
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-"}'
}

# One measurement: "images/s|GPU MiB|loader/step" of a bench command (empty fields if it failed).
measure() {
  local log=$1 limit=$2; shift 2
  local o
  o=$(with_gpu_memory timeout "$limit" "$@" 2>&1)
  { echo "\$ $*"; echo "$o"; echo; } >> "$log"
  local ips mem ratio
  ips=$(awk '/training step:/ {print $3}' <<< "$o")
  mem=$(awk '/gpu-peak-mib:/ {print $2}' <<< "$o")
  ratio=$(awk '/loader \/ step:/ {print $4}' <<< "$o")
  echo "${ips}|${mem}|${ratio}"
}

# Where the GPU step's time goes, kernel by kernel (about 2 minutes with the default build):
#   run(command="scripts/gpu-check.sh profile", carry=[".gpu", ".gl"], timeout_s=300)
# For each row of GPU_CHECK_PROFILE_ROWS (index into bench/commands.sh:batch, default resnet18
# and commands 7 and 8 at batch 64): a plain bench, which also fills cubecl's autotune cache in an
# autotuning build, then the same bench with every kernel timed (CUBECL_DEBUG_OPTION=profile:
# each launch waits for the GPU, so that run is slower), summed by kernel with
# scripts/kernel_times.py into $OUT/kernels-*.md. GPU_CHECK_PROFILE_BIN=pnn-autotune profiles the
# autotuning build (carry .gpu-tune too); its first bench of a model tunes for 2-3 minutes,
# so give it GPU_CHECK_PROFILE_FILL=240 seconds (default 100).
profile_half() {
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  setup
  local bin=/tmp/${GPU_CHECK_PROFILE_BIN:-pnn}
  # The GPU tests first (about 15 s with the default build).
  local t0=$SECONDS
  timeout 90 /tmp/gpu-tests --test-threads 1 > "$out/gpu-tests.log" 2>&1
  echo "GPU tests: exit $?, $((SECONDS - t0)) s" | tee "$out/profile.log"
  grep -E '^test |test result|panicked' "$out/gpu-tests.log" | head -20 | tee -a "$out/profile.log"
  local specs spec
  IFS=, read -ra specs <<< "${GPU_CHECK_PROFILE_ROWS:-0:64,6:64,7:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]} name="kernels-$((i + 1))-b$b"
    {
      echo "# Command $((i + 1)) at batch $b: \`$flags\`"
      echo
      echo '```'
      timeout "${GPU_CHECK_PROFILE_FILL:-100}" "$bin" bench --device vulkan $flags --batch-size "$b" --steps 3 --warmup 2 2>&1 | grep -E 'training step|error'
      echo '```'
      echo
    } > "$out/$name.md"
    rm -f "/tmp/$name.log"
    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="/tmp/$name.log" timeout 90 \
      "$bin" bench --device vulkan $flags --batch-size "$b" --steps 2 --warmup 0 > /dev/null 2>&1
    echo "Every kernel timed over 2 steps (the autotune cache filled by the run above):" >> "$out/$name.md"
    echo >> "$out/$name.md"
    python3 scripts/kernel_times.py "/tmp/$name.log" --top 30 >> "$out/$name.md" 2>&1
    # The raw log too (compressed), in case the summary's parsing missed its format.
    gzip -c "/tmp/$name.log" > "$out/$name.log.gz"
    cat "$out/$name.md"
  done
}

run_half() {
  local t0=$SECONDS
  local out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  local report=$out/gpu-check.md
  setup
  local pnn=/tmp/pnn steps=${GPU_CHECK_STEPS:-5}
  # Deadlines (seconds from the start) keep the whole run inside one device call: the table
  # stops launching rows at BENCH_END, the training run ends by TRAIN_END.
  local bench_end=${GPU_CHECK_BENCH_END:-390} train_end=${GPU_CHECK_TRAIN_END:-520}
  {
    echo "# pnn on a GPU (Vulkan) beside PyTorch (CUDA)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    echo "- PyTorch $(python3 -c 'import torch; print(torch.__version__)'); pnn bundles: $(bundle_commits)"
    echo "- started $(date -u +%FT%TZ)"
    echo
  } > "$report"

  echo "## 1. GPU tests" >> "$report"
  timeout "${GPU_CHECK_TEST_SECONDS:-120}" /tmp/gpu-tests --test-threads 1 > "$out/gpu-tests.log" 2>&1
  echo "exit status $? after $((SECONDS - t0)) s ($(grep -E '^test result' "$out/gpu-tests.log" || echo 'no result line: see gpu-tests.log'))" >> "$report"
  echo '```' >> "$report"
  grep -E '^test |panicked' "$out/gpu-tests.log" | head -12 >> "$report"
  echo '```' >> "$report"
  echo >> "$report"

  echo "## 2. Training step, synthetic CIFAR-10 data, median of $steps steps after 2 warm-up" >> "$report"
  echo >> "$report"
  echo "Each cell is its own process; GPU MiB is the most memory nvidia-smi saw in use during it (context included)." >> "$report"
  echo "'composition' is pnn with PNN_UNFUSED=1: burn's operations in place of the fused layer's kernels." >> "$report"
  echo >> "$report"
  echo "| # | command | batch | PyTorch images/s | pnn images/s | pnn / PyTorch | PyTorch GPU MiB | pnn GPU MiB | pnn composition images/s (GPU MiB) | pnn loader / step |" >> "$report"
  echo "|---|---|---|---|---|---|---|---|---|---|" >> "$report"
  # Most telling first, in case time runs out: the 64-mask commands, then the baseline, then the rest.
  local rows=$out/rows.txt spec rate64=""
  : > "$rows"
  for spec in 6:16 6:64 0:16 0:64 5:16 5:64 7:16 7:64 1:16 1:64 2:16 2:64 3:16 3:64 4:16 4:64; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]} p t u="" left
    left=$((t0 + bench_end - SECONDS))
    if [ "$left" -lt 15 ]; then
      echo "$i $b| $((i + 1)) | \`$flags\` | $b | not run: out of time |  |  |  |  |  |  |" >> "$rows"
      continue
    fi
    local limit=$((left < 45 ? left : 45))
    p=$(measure "$out/bench.log" "$limit" "$pnn" bench --device vulkan $flags --batch-size "$b" --steps "$steps" --warmup 2)
    t=$(measure "$out/bench.log" "$limit" python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps "$steps" --warmup 2)
    if [[ $flags == *"--nmasks 64"* ]] && [ $((t0 + bench_end - SECONDS)) -gt 20 ]; then
      u=$(measure "$out/bench.log" "$limit" env PNN_UNFUSED=1 "$pnn" bench --device vulkan $flags --batch-size "$b" --steps "$steps" --warmup 2)
    fi
    local p_ips p_mem p_ratio t_ips t_mem u_ips u_mem
    IFS='|' read -r p_ips p_mem p_ratio <<< "$p"
    IFS='|' read -r t_ips t_mem _ <<< "$t"
    IFS='|' read -r u_ips u_mem _ <<< "$u"
    if [ "$i" = 6 ] && [ "$b" = 64 ]; then rate64=$p_ips; fi
    local ratio composition=""
    ratio=$(speed_ratio "$p_ips" "$t_ips")
    [ -n "$u" ] && composition="${u_ips:-failed} (${u_mem:--})"
    echo "$i $b| $((i + 1)) | \`$flags\` | $b | ${t_ips:-failed} | ${p_ips:-failed} | $ratio | ${t_mem:--} | ${p_mem:--} | $composition | ${p_ratio:--} |" >> "$rows"
  done
  sort -k1,1n -k2,2n "$rows" | cut -d'|' -f2- | sed 's/^/|/' >> "$report"
  echo >> "$report"
  echo "(table done after $((SECONDS - t0)) s)" >> "$report"
  echo >> "$report"

  # Data parallel's own cost: the one GPU opened twice (vulkan and vulkan:0 are two devices
  # there) splits each batch in two, beside the same command on one device. The same GPU does
  # both halves, so this measures the replicas' copies and the gradients' transfer, not a
  # speed-up, which needs two GPUs.
  if [ $((t0 + train_end - SECONDS)) -gt 150 ]; then
    local flags7=${commands[6]} one two
    one=$(measure "$out/bench.log" 45 "$pnn" bench --device vulkan $flags7 --batch-size 64 --steps "$steps" --warmup 2)
    two=$(measure "$out/bench.log" 45 "$pnn" bench --device vulkan,vulkan:0 $flags7 --batch-size 64 --steps "$steps" --warmup 2)
    {
      echo "Data parallel on the one GPU opened twice (command 7, batch 64, parts of 32): ${two%%|*} images/s,"
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
  echo "## 3. Two epochs of perturb_resnet18, 64 shared masks, CIFAR-10 ($subset training images, $test_subset test images, $budget s allowed)" >> "$report"
  mkdir -p /tmp/data && tar xzf .gpu-data/cifar10-jpeg.tar.gz -C /tmp/data
  timeout -s INT "$budget" "$pnn" train --device vulkan --net-type perturb_resnet18 --nfilters 128 \
    --first_filter_size 3 --filter_size 0 --nmasks 64 --no-unique_masks --learning-rate 1e-3 --batch-size 64 \
    --nepochs 2 --dataset-train CIFAR10 --dataset-test CIFAR10 --dataroot /tmp/data --no-download \
    --train-subset "$subset" --test-subset "$test_subset" --save /tmp/gpu-run > "$out/train.log" 2>&1
  echo "exit status $? (130: stopped by the time limit, with a checkpoint)" >> "$report"
  echo '```' >> "$report"
  grep -E 'Training|Epoch|Best|stopped|rror' "$out/train.log" | cut -c1-400 >> "$report"
  echo '```' >> "$report"
  cp /tmp/gpu-run/metrics.csv "$out/" 2>/dev/null
  echo "- finished $(date -u +%FT%TZ), $((SECONDS - t0)) s after the start" >> "$report"
  cat "$report"
}

# burn's autotuning builds against the default build and PyTorch, about 8 minutes:
#   run(command="scripts/gpu-check.sh tune", carry=[".gpu-tune", ".gpu-fuse", ".gl"], timeout_s=520)
# The builds are those whose folders the call carries (the three together are over the 64 MiB a
# call takes; .gpu-tune 27 MB and .gpu-fuse about 32 MB, its pnn alone 16.2 MB compressed): `default` (.gpu), `autotune` (.gpu-tune: gpu-autotune), `fusion` (.gpu-fuse:
# gpu-autotune and gpu-fusion, burn's operation fusion).
# 1. the GPU tests of each build (a tuning build tunes each new kernel shape first:
# GPU_CHECK_TUNE_TEST_SECONDS, default 150; cubecl's cache on disk is shared by the builds);
# 2. PyTorch, and the default build if carried, on GPU_CHECK_TUNE_TABLE (default commands 7, 1
# and 8 at batch 64); 3. each tuning build on GPU_CHECK_TUNE_ROWS (default commands 7 and 1 at
# batch 64): each row is retried while time is left (GPU_CHECK_TUNE_END, 470 s from the start),
# since cubecl writes every tuned kernel choice to its cache on disk as it goes, so a second
# process starts where the first was stopped. Reports the wall time of each try and the steady
# images/s once a try finishes.
tune_half() {
  local t0=$SECONDS out=${OUT:-/tmp/gpu-check}
  mkdir -p "$out"
  local report=$out/tune.md
  setup
  local build builds=() tuned=()
  [ -x /tmp/pnn ] && builds+=(default)
  for build in autotune fusion; do
    [ -x "/tmp/pnn-$build" ] && builds+=("$build") && tuned+=("$build")
  done
  {
    echo "# burn's autotune (and fusion) on a GPU (Vulkan), beside PyTorch (CUDA)"
    echo
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
    echo "- PyTorch $(python3 -c 'import torch; print(torch.__version__)'); builds: ${builds[*]} ($(bundle_commits)); started $(date -u +%FT%TZ)"
    echo
    echo "## 1. GPU tests"
  } > "$report"
  for build in "${builds[@]}"; do
    local suffix="-$build" limit=${GPU_CHECK_TUNE_TEST_SECONDS:-150}
    [ "$build" = default ] && suffix="" && limit=90
    echo "### $build build" >> "$report"
    tests_into_report "/tmp/gpu-tests$suffix" "$limit" "$out/gpu-tests$suffix.log" "$report"
  done
  {
    echo
    echo "## 2. PyTorch and the default build: median of 5 steps after 2 warm-up"
    echo
    echo "| # | batch | PyTorch images/s | pnn images/s | pnn / PyTorch | PyTorch GPU MiB | pnn GPU MiB |"
    echo "|---|---|---|---|---|---|---|"
  } >> "$report"
  local spec specs
  IFS=, read -ra specs <<< "${GPU_CHECK_TUNE_TABLE:-6:64,0:64,7:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:} p="" t p_ips p_mem t_ips t_mem ratio
    local flags=${commands[$i]}
    [ -x /tmp/pnn ] && p=$(measure "$out/tune-bench.log" 45 /tmp/pnn bench --device vulkan $flags --batch-size "$b" --steps 5 --warmup 2)
    t=$(measure "$out/tune-bench.log" 45 python3 bench/torch_bench.py --device cuda $flags --batch-size "$b" --steps 5 --warmup 2)
    IFS='|' read -r p_ips p_mem _ <<< "$p"
    IFS='|' read -r t_ips t_mem _ <<< "$t"
    ratio=$(speed_ratio "$p_ips" "$t_ips")
    echo "| $((i + 1)) | $b | ${t_ips:-failed} | ${p_ips:-not carried} | $ratio | ${t_mem:--} | ${p_mem:--} |" >> "$report"
  done
  {
    echo
    echo "(after $((SECONDS - t0)) s)"
    echo
    echo "## 3. Tuning builds: tries of one process each, median of 5 steps after 3 warm-up"
    echo
    echo "| # | batch | build | try | exit | wall s | images/s | GPU MiB |"
    echo "|---|---|---|---|---|---|---|---|"
  } >> "$report"
  local tune_end=${GPU_CHECK_TUNE_END:-470}
  IFS=, read -ra specs <<< "${GPU_CHECK_TUNE_ROWS:-6:64,0:64}"
  for spec in "${specs[@]}"; do
    local i=${spec%:*} b=${spec#*:}
    local flags=${commands[$i]}
    for build in "${tuned[@]}"; do
      local try=1
      while :; do
        local left=$((t0 + tune_end - SECONDS))
        [ "$left" -lt 20 ] && break
        local limit=$((left < 180 ? left : 180)) start=$SECONDS o rc
        o=$(with_gpu_memory timeout "$limit" "/tmp/pnn-$build" bench --device vulkan $flags --batch-size "$b" --steps 5 --warmup 3 2>&1)
        rc=$(grep -q 'training step:' <<< "$o" && echo 0 || echo 1)
        { echo "\$ pnn-$build bench $flags --batch-size $b (try $try)"; echo "$o"; echo; } >> "$out/tune-bench.log"
        echo "| $((i + 1)) | $b | $build | $try | $rc | $((SECONDS - start)) | $(awk '/training step:/ {print $3}' <<< "$o") | $(awk '/gpu-peak-mib:/ {print $2}' <<< "$o") |" >> "$report"
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
  probe) probe_half ;;
  profile) profile_half ;;
  run) run_half ;;
  tune) tune_half ;;
  *) echo "usage: scripts/gpu-check.sh prepare | probe | profile | run | tune (see the header of $0)" >&2; exit 2 ;;
esac
