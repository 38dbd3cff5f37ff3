"""Overhead of each probe on training throughput, against a probe-free run in the same process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probes.py [--proxy small] [--tokens 200000] [--repeats 3]

Each repeat trains the same run twice, without probes and with all of them (the order alternates, so
load from other processes hits both alike). Two measures, median over repeats:

- A/B: tokens/s with all probes / tokens/s without (1.00 = free; the target is >= 0.95). On a shared
  machine the load moves between runs, so this ratio is noisy;
- in-run: every probe's callbacks are timed inside the run with all probes, so each probe's cost is
  measured under the same load as the steps it rides on: ``1 - (time in its per-step callbacks) /
  (training time)`` is the throughput ratio it alone would give, and its ``on_start`` + ``on_end``
  seconds (the ray probe's statistics and null model) are a one-off cost per run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from optispace.probes import PROBES, build
from optispace.proxies import TrainConfig, train

PER_STEP = ("on_after_backward", "on_after_step")
ONCE = ("on_start", "on_end")


class Timed:
    """A probe whose callbacks add their seconds to ``spent[method]``; it has exactly the probe's methods."""

    def __init__(self, probe) -> None:
        self.probe, self.name = probe, probe.name
        self.spent: dict[str, float] = defaultdict(float)

    def __getattr__(self, method: str):
        inner = getattr(self.probe, method)  # AttributeError for a method the probe lacks, as hasattr expects

        def timed(*args):
            started = time.perf_counter()
            try:
                return inner(*args)
            finally:
                self.spent[method] += time.perf_counter() - started

        return timed


def run(proxy: str, tokens: int, recipe: str, timed: list[Timed]) -> float:
    """Training tokens/s of one run (evaluation only at the end) with the ``timed`` probes attached."""
    cfg = TrainConfig(recipe=recipe, proxy=proxy, tokens=tokens, eval_every=10**9)
    record = train(cfg, callbacks=timed, progress=False)
    return record.tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="small")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="adamw")
    args = parser.parse_args()
    run(args.proxy, args.tokens // 8, args.recipe, [])  # warm-up: corpus cache, allocator, threads
    bare, probed = [], []
    step_ratio: dict[str, list[float]] = defaultdict(list)
    once: dict[str, list[float]] = defaultdict(list)
    for repeat in range(args.repeats):
        timed = [Timed(p) for p in build(list(PROBES))]
        order = ("bare", "probed") if repeat % 2 == 0 else ("probed", "bare")
        for kind in order:
            if kind == "bare":
                bare.append(run(args.proxy, args.tokens, args.recipe, []))
                continue
            probed.append(run(args.proxy, args.tokens, args.recipe, timed))
            train_time = args.tokens / probed[-1]  # steps only; the per-step callbacks run inside them
            for t in timed:
                step_ratio[t.name].append(1 - sum(t.spent[m] for m in PER_STEP) / train_time)
                once[t.name].append(sum(t.spent[m] for m in ONCE))
    print(f"{args.proxy} tier, {args.recipe}, {args.tokens:,} tokens per run, median of {args.repeats}")
    print(f"anchor (no probe): {statistics.median(bare):,.0f} tokens/s")
    pairs = [p / b for p, b in zip(probed, bare, strict=True)]
    print(f"A/B, all probes: {statistics.median(pairs):.3f} (pairs: {', '.join(f'{r:.3f}' for r in pairs)})")
    print(f"{'probe':<10} {'in-run ratio':>12} {'start+end s':>12}")
    for name in PROBES:
        ratio, seconds = statistics.median(step_ratio[name]), statistics.median(once[name])
        print(f"{name:<10} {ratio:>12.3f} {seconds:>12.2f}")
    combined = 1 - sum(1 - statistics.median(v) for v in step_ratio.values())
    print(f"{'all':<10} {combined:>12.3f}")


if __name__ == "__main__":
    main()
