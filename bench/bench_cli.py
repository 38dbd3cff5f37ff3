"""Start-up of ``optispace --help``, against a bare Python start measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cli.py [--repeats 11]

Each repeat starts three fresh interpreters, in turn (so load from other processes hits all alike):
the anchor ``python -c pass``, ``python -m optispace.cli --help``, and ``python -c "import torch"``
for scale. Printed: the median wall time of each, and each as a ratio to the anchor. The package
loads its names on first use, so ``--help`` should stay near the anchor, far below torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (anchor)": ["-c", "pass"],
    "optispace --help": ["-m", "optispace.cli", "--help"],
    "python -c 'import torch'": ["-c", "import torch"],
}


def wall(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        wall(command)  # warm the file cache
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    anchor = statistics.median(times["python -c pass (anchor)"])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:28s} {median:6.3f} s   {median / anchor:6.1f}x the anchor")


if __name__ == "__main__":
    main()
