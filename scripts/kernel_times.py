#!/usr/bin/env python3
"""Where a GPU step's time goes: sums cubecl's per-kernel profile log by kernel.

A pnn run with `CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=FILE` makes cubecl time every kernel
launch (each one then waits for the GPU, so the run is slower than a normal one) and write a line
per launch to FILE:

    | 12.3µs     | burn_cubecl::kernel::binary::kernel_binop::KernelBinop<...>

This prints one markdown row per kernel, the largest total first: launches, total and mean time,
and the share of all timed kernel time. Launches whose time cubecl could not read ("not
measured") are counted apart.

    scripts/kernel_times.py FILE [--top N]
"""
import argparse
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\|\s*(?P<time>[0-9.]+)\s*(?P<unit>ns|µs|us|ms|s)\s*\|\s*(?P<name>.+?)\s*$")
NOT_MEASURED = re.compile(r"^\|\s*not measured\s*\|\s*(?P<name>.+?)\s*$")
SECONDS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def kernel_name(label):
    """The kernel's path without its generic arguments and the hash cubecl appends
    (`name_1a2b3c4d`: one per compiled variant)."""
    name = re.sub(r"_[0-9a-f]{8}$", "", label.strip())
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()


def summarise(lines):
    totals = defaultdict(float)
    counts = defaultdict(int)
    unmeasured = defaultdict(int)
    for line in lines:
        line = line.strip()
        m = LINE.match(line)
        if m:
            name = kernel_name(m.group("name"))
            totals[name] += float(m.group("time")) * SECONDS[m.group("unit")]
            counts[name] += 1
            continue
        m = NOT_MEASURED.match(line)
        if m:
            unmeasured[kernel_name(m.group("name"))] += 1
    return totals, counts, unmeasured


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args(argv)
    with open(a.log, encoding="utf-8", errors="replace") as f:
        totals, counts, unmeasured = summarise(f)
    if not totals:
        print(f"no timed kernel lines in {a.log}")
        return 1
    whole = sum(totals.values())
    print(f"{sum(counts.values())} timed launches of {len(totals)} kernels, {whole * 1e3:.1f} ms in all")
    print()
    print("| kernel | launches | total ms | mean µs | share |")
    print("|---|---|---|---|---|")
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1])[: a.top]:
        n = counts[name]
        print(f"| `{name}` | {n} | {total * 1e3:.2f} | {total / n * 1e6:.1f} | {100 * total / whole:.1f}% |")
    if unmeasured:
        print()
        print(f"not measured: {sum(unmeasured.values())} launches of {len(unmeasured)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
