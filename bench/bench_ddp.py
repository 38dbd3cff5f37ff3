"""Training throughput of ``optispace train --nproc N`` (DDP, then FSDP2, over gloo on CPU) against
one process, measured in the same run.

    .venv/bin/python bench/bench_ddp.py [--proxy small] [--steps 40] [--nproc 2] [--repeats 2]

Each repeat runs, in turn (so load from other processes hits all alike): the anchor, one process
with one thread; one process with torch's default threads; N ranks with ``cores / N`` threads each,
under ``--parallel ddp`` and under ``--parallel fsdp2``. Printed: each one's median tokens/s
(training steps only, as ``optispace train`` counts them) and its ratio to the anchor. The global
batch is the same in all four.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys


def tokens_per_s(argv: list[str], env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-m", "optispace", *argv, "-q"], check=True, capture_output=True,
                          text=True, env=env)
    return float(re.search(r"([\d,.]+) tokens/s", done.stdout).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run = ["train", "--recipe", "adamw", "--proxy", args.proxy, "--data", "zipf:n=400000",
           "--steps", str(args.steps), "--device", "cpu"]
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cases = {
        "1 process, 1 thread (anchor)": (run, base | {"OMP_NUM_THREADS": "1"}),
        "1 process, torch's default threads": (run, base),
        **{f"{args.nproc} ranks, --parallel {parallel}": ([*run, "--nproc", str(args.nproc), "--parallel",
                                                           parallel], base) for parallel in ("ddp", "fsdp2")},
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (argv, env) in cases.items():
            rates[name].append(tokens_per_s(argv, env))
    anchor = statistics.median(rates["1 process, 1 thread (anchor)"])
    print(f"{args.proxy} tier, {args.steps} steps, {os.cpu_count()} cores, median of {args.repeats}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<36} {median:>10,.0f} tokens/s  {median / anchor:5.2f}x")


if __name__ == "__main__":
    main()
