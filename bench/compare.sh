#!/usr/bin/env bash
# pnn against PyTorch, side by side in one run: for each command and batch size, PyTorch's
# training step (bench/torch_bench.py: the same models, parameter counts checked equal) and then
# pnn's (`pnn bench`), both with 2 threads on synthetic CIFAR-10 data; a Markdown table of
# images/s and peak memory with the ratios pnn / PyTorch.
#
#   bench/compare.sh [--batch 16,64] [--steps 3] [--warmup 1] [--rounds 1] [--only 1,2,...]
#                    [--fma-units 2] [--busy-ok] [--list]
#
# --rounds R runs each PyTorch / pnn pair R times, alternating, and reports each side's median
# images/s and the median of the R ratios with their range: on a shared machine one pair can
# land in a slow spell that the next one misses.
#
# A quiet machine first: before each pair the script samples how busy the CPUs are (1 s of
# /proc/stat) and waits, up to 2 minutes, for them to be under 10% busy; it stops there unless
# --busy-ok. The busiest sample before a measured pair is printed under the table.
#
# The fraction of the CPU's peak each side reaches: FLOPs per training image (PyTorch's
# counter over one forward and backward pass: convolutions and linear layers) x images/s,
# divided by 2 threads x clock x SIMD lanes (16 with AVX-512, 8 with AVX2) x 2 (a multiply-add)
# x --fma-units (vector FMA units per core; 2 on server Xeons and on Zen 4's AVX-512 halves).
#
# The commands are the reproduction's experiment table (1-8, as `pnn reproduce --list` prints
# them, without their --batch-size), cifarnet and lenet (9, 10), and the paper authors' updated
# commands (11, 12: `pnn reproduce --table update --list`). PyTorch is installed into a
# virtual environment on first use: $PNN_TORCH_VENV, default bench/.venv (PyPI's torch wheel; it
# runs on the CPU). A PyTorch run that would not fit in memory stops at 85% of RAM and is shown
# as "out of memory". Build pnn first (cargo build --release), or the script builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/commands.sh

batches=16,64
steps=3
warmup=1
rounds=1
only=
fma_units=2
busy_ok=
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batches=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --fma-units) fma_units=$2; shift 2 ;;
    --busy-ok) busy_ok=1; shift ;;
    --list) for i in "${!commands[@]}"; do echo "$((i + 1)). ${commands[$i]}"; done; exit 0 ;;
    *) echo "bench/compare.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done

venv=${PNN_TORCH_VENV:-bench/.venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "installing PyTorch into $venv (once; a few GB from PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy >&2
fi
pnn=./target/release/pnn
[ -x "$pnn" ] || cargo build --release >&2

export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 RAYON_NUM_THREADS=2

# "images/s MiB regular+noise-values GFLOP-per-image" from either program's output ("-" where
# it has none).
parse() {
  awk '/training step:/ {ips=$3} /peak memory:/ {mem=$3} /out of memory/ {oom=1}
       /parameters: / && /regular,/ {p=$2 "+" $4} /FLOPs per image:/ {f=$4}
       END {if (oom) ips="oom"; print (ips?ips:"-"), (mem?mem:"-"), (p?p:"-"), (f?f:"-")}'
}

# Percent of the CPUs busy over one second, from /proc/stat.
busy_percent() {
  read -r _ a1 b1 c1 d1 e1 f1 g1 h1 _ < /proc/stat
  sleep 1
  read -r _ a2 b2 c2 d2 e2 f2 g2 h2 _ < /proc/stat
  awk -v t1=$((a1 + b1 + c1 + d1 + e1 + f1 + g1 + h1)) -v i1=$((d1 + e1)) \
      -v t2=$((a2 + b2 + c2 + d2 + e2 + f2 + g2 + h2)) -v i2=$((d2 + e2)) \
      'BEGIN {t = t2 - t1; printf "%.0f", (t > 0 ? 100 * (1 - (i2 - i1) / t) : 0)}'
}

# Waits for a quiet machine (under 10% busy), up to 2 minutes; records the last sample in
# $busiest when it is the largest so far. Without --busy-ok a machine that stays busy stops the run.
busiest=0
wait_quiet() {
  local b
  for _ in $(seq 1 120); do
    b=$(busy_percent)
    [ "$b" -lt 10 ] && break
  done
  [ "$b" -gt "$busiest" ] && busiest=$b
  if [ "$b" -ge 10 ] && [ -z "$busy_ok" ]; then
    echo "bench/compare.sh: the CPUs are $b% busy with other work after 2 minutes of waiting:" >&2
    ps -eo pid,pcpu,comm --sort=-pcpu | head -5 >&2
    echo "measure on a quiet machine, or pass --busy-ok to measure anyway (the ratios then mean less)" >&2
    exit 1
  fi
}

# The median of numbers ("oom" if the first is).
median() {
  [ "$1" = oom ] && { echo oom; return; }
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

# The larger of two numbers, either of which may be "-".
larger() {
  awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-") print b; else if (b == "-") print a; else print (a + 0 > b + 0 ? a : b)}'
}

# The peak of 2 threads in GFLOP/s: clock x SIMD lanes x 2 (multiply-add) x FMA units x 2.
mhz=$(awk -F: '/cpu MHz/ {print $2; exit}' /proc/cpuinfo | xargs)
lanes=4
grep -qw avx2 /proc/cpuinfo && lanes=8
grep -qw avx512f /proc/cpuinfo && lanes=16
peak=$(awk -v m="$mhz" -v l="$lanes" -v u="$fma_units" 'BEGIN {printf "%.1f", m / 1000 * l * 2 * u * 2}')

echo "# pnn vs PyTorch, training step on synthetic CIFAR-10 data, 2 threads"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo)"
echo "- peak of 2 threads: $peak GFLOP/s ($mhz MHz x $lanes lanes x 2 flops per multiply-add x $fma_units FMA units x 2 cores)"
echo "- PyTorch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'); pnn $(git rev-parse --short HEAD)$(git diff --quiet || echo +modified) (burn flex)"
echo "- median of $steps steps after $warmup warm-up, each PyTorch run followed at once by pnn's"
[ "$rounds" -gt 1 ] && echo "- $rounds rounds of that pair per row; images/s: each side's median over the rounds, memory: its largest"
echo
echo "| # | command | batch | PyTorch images/s | pnn images/s | pnn / PyTorch (range) | GFLOP per image | PyTorch % of peak | pnn % of peak | PyTorch MiB | pnn MiB | PyTorch / pnn memory | parameters (regular + noise values) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
IFS=, read -ra batch_list <<< "$batches"
for i in "${!commands[@]}"; do
  id=$((i + 1))
  if [ -n "$only" ] && ! [[ ",$only," == *",$id,"* ]]; then continue; fi
  flags=${commands[$i]}
  for b in "${batch_list[@]}"; do
    # Rounds alternate the two programs, so that a slow spell of the machine hits both sides.
    t_list=() p_list=() t_mem=- p_mem=- t_par=- flops=- ratios=()
    for ((r = 0; r < rounds; r++)); do
      wait_quiet
      if [ "${t_list[0]:-}" != oom ]; then
        # shellcheck disable=SC2086
        t_out=$("$venv/bin/python" bench/torch_bench.py $flags --batch-size "$b" --steps "$steps" --warmup "$warmup" 2>&1) || {
          rc=$?; [ $rc -eq 3 ] || { echo "PyTorch failed on #$id ($flags, batch $b):" >&2; echo "$t_out" >&2; exit 1; }; }
        read -r ips mem t_par t_flops < <(parse <<< "$t_out")
        [ "$t_flops" != - ] && flops=$t_flops
        t_list+=("$ips"); t_mem=$(larger "$t_mem" "$mem")
      fi
      # shellcheck disable=SC2086
      p_out=$("$pnn" bench --device cpu $flags --batch-size "$b" --steps "$steps" --warmup "$warmup" 2>&1) || {
        echo "pnn failed on #$id ($flags, batch $b):" >&2; echo "$p_out" >&2; exit 1; }
      read -r ips mem _ _ < <(parse <<< "$p_out")
      p_list+=("$ips"); p_mem=$(larger "$p_mem" "$mem")
      [ "${t_list[0]}" != oom ] && ratios+=("$(awk -v p="$ips" -v t="${t_list[-1]}" 'BEGIN {printf "%.4f", p / t}')")
    done
    t_ips=$(median "${t_list[@]}")
    p_ips=$(median "${p_list[@]}")
    p_par=$("$pnn" info $flags 2>/dev/null | sed -n 's/.*(\([0-9]*\) regular parameters, \([0-9]*\) noise mask values.*/\1+\2/p')
    params="$p_par"
    [ "$p_par" = "$t_par" ] || params="**MISMATCH: pnn $p_par, PyTorch $t_par**"
    speed=-
    if [ ${#ratios[@]} -gt 0 ]; then
      speed=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{v[NR] = $1} END {
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
        if (NR > 1) printf "%.2fx (%.2f-%.2f)", m, v[1], v[NR]; else printf "%.2fx", m }')
    fi
    awk -v id="$id" -v f="$flags" -v b="$b" -v ti="$t_ips" -v pi="$p_ips" -v tm="$t_mem" -v pm="$p_mem" -v par="$params" \
        -v speed="$speed" -v fl="$flops" -v peak="$peak" 'BEGIN {
      mem = (tm == "-" || ti == "oom") ? "-" : sprintf("%.1fx", tm / pm);
      tv = 100 * fl * ti / peak; pv = 100 * fl * pi / peak;
      tpk = (fl == "-" || ti == "oom") ? "-" : sprintf(tv < 10 ? "%.1f%%" : "%.0f%%", tv);
      ppk = (fl == "-") ? "-" : sprintf(pv < 10 ? "%.1f%%" : "%.0f%%", pv);
      printf "| %s | `%s` | %s | %s | %.1f | %s | %s | %s | %s | %s | %.0f | %s | %s |\n", id, f, b, (ti == "oom" ? "out of memory (" tm " MiB at the cap)" : ti), pi, speed, fl, tpk, ppk, (ti == "oom" ? "-" : tm), pm, mem, par }'
  done
done
echo
echo "- the busiest the CPUs were, sampled for 1 s before each measured pair: $busiest%"
