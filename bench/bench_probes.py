"""Overhead of each probe on training throughput, as ratios against a probe-free run in the same process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probes.py [--proxy small] [--tokens 200000] [--repeats 3]

Runs are interleaved (none, ray, geometry, outliers, all; then again) so that load from other
processes hits every configuration alike; the median over repeats is reported. Two ratios per probe,
probe-free / with probe (1.00 = free; the target is >= 0.95 with default sampling):

- ``train``: tokens/s of the training steps (callbacks run inside them);
- ``wall``: the whole ``train()`` call, so it also counts ``on_start`` and ``on_end`` (the ray
  probe's statistics and null model are computed there).
"""

from __future__ import annotations

import argparse
import statistics
import time

from optispace.proxies import TrainConfig, train

CONFIGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "ray": ("ray",),
    "geometry": ("geometry",),
    "outliers": ("outliers",),
    "all": ("ray", "geometry", "outliers"),
}


def measure(proxy: str, tokens: int, probes: tuple[str, ...], recipe: str) -> tuple[float, float]:
    """(training tokens/s, seconds for the whole ``train`` call) of one run."""
    cfg = TrainConfig(recipe=recipe, proxy=proxy, tokens=tokens, probes=probes, eval_every=10**9)
    started = time.perf_counter()
    record = train(cfg, progress=False)
    return record.tokens_per_s, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="small")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="adamw")
    args = parser.parse_args()
    measure(args.proxy, args.tokens // 4, (), args.recipe)  # warm-up: corpus cache, allocator, threads
    speed: dict[str, list[float]] = {name: [] for name in CONFIGS}
    wall: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeats):
        for name, probes in CONFIGS.items():
            tokens_per_s, seconds = measure(args.proxy, args.tokens, probes, args.recipe)
            speed[name].append(tokens_per_s)
            wall[name].append(seconds)
    base_speed, base_wall = statistics.median(speed["none"]), statistics.median(wall["none"])
    print(f"{args.proxy} tier, {args.recipe}, {args.tokens:,} tokens per run, median of {args.repeats}")
    print(f"anchor (no probe): {base_speed:,.0f} tokens/s, {base_wall:.1f} s per run")
    print(f"{'probe':<10} {'train':>7} {'wall':>7}")
    for name in CONFIGS:
        if name != "none":
            train_ratio = statistics.median(speed[name]) / base_speed
            wall_ratio = base_wall / statistics.median(wall[name])
            print(f"{name:<10} {train_ratio:>7.3f} {wall_ratio:>7.3f}")


if __name__ == "__main__":
    main()
