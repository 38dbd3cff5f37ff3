"""TPE vs random search on the quickstart space, and the compute pruning saves.

Three arms, each run as a study per study seed (default 3 seeds), on ``searches/quickstart.toml``
shrunk by the flags below (default: 20 trials of 100 steps, one training seed per configuration;
TPE starts with 10 random trials, seeded like the random arm, so the arms differ from trial 11 on):

- ``tpe``: TPE with the median pruner;
- ``random``: random search with the same pruner (the anchor);
- ``tpe, no pruning``: TPE without a pruner.

Printed: the best validation loss after n trials (mean over study seeds) for each arm, the ratio
TPE / random of the best values, and the compute of each arm in optimizer steps trained (pruned
runs stop early; a diverged run stops where it diverged) with the fraction pruning saves, next to
the best values it reached. Compute is counted in steps, not seconds, so the ratio does not depend
on the load of a shared machine. Default size: 145 s wall (112 s of user CPU) measured on 2 CPU
cores.

    .venv/bin/python bench/bench_search.py [--trials 20] [--steps 100] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from optispace.search.run import run_search
from optispace.search.spec import SearchSpec, parse_search
from optispace.search.storage import open_storage

QUICKSTART = Path(__file__).parent.parent / "searches" / "quickstart.toml"
ARMS = {"tpe": ("tpe", "median"), "random": ("random", "median"), "tpe, no pruning": ("tpe", "none")}


def arm_spec(base: SearchSpec, sampler: str, pruner: str, seed: int, args: argparse.Namespace) -> SearchSpec:
    """The quickstart spec with this arm's sampler, pruner and study seed, at the bench's size."""
    proxy = dataclasses.replace(base.proxy, steps=args.steps, eval_every=max(1, args.steps // 6))
    raw = {**base.raw, "study": {**base.raw["study"], "sampler": sampler, "pruner": pruner, "seed": seed}}
    return dataclasses.replace(
        base,
        name=f"bench-{sampler}-{pruner}-{seed}",
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        trials=args.trials,
        seeds=(0,),
        proxy=proxy,
        raw=raw,
    )


def steps_trained(trial: FrozenTrial, steps: int) -> int:
    """Optimizer steps a trial's (single-seed) run took: to its end, its pruning or its divergence."""
    if trial.state == TrialState.PRUNED:
        return max(trial.intermediate_values)
    if "failure_step" in trial.user_attrs:
        return int(trial.user_attrs["failure_step"])
    return steps


def best_after(trials: list[FrozenTrial], n: int) -> float:
    complete = [t.values[0] for t in trials[:n] if t.state == TrialState.COMPLETE]
    return min(complete, default=math.inf)


def run_arm(base: SearchSpec, sampler: str, pruner: str, args: argparse.Namespace, folder: str) -> list[list]:
    """Per study seed: the finished trials in order."""
    runs = []
    for seed in range(args.seeds):
        spec = arm_spec(base, sampler, pruner, seed, args)
        url = str(Path(folder) / f"{spec.name}.journal")
        run_search(spec, url, progress=False)
        study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
        runs.append([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per study")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="study seeds per arm")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = parse_search(QUICKSTART)
    checkpoints = sorted({max(1, args.trials // 3), max(1, 2 * args.trials // 3), args.trials})
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for arm, (sampler, pruner) in ARMS.items():
            start = time.perf_counter()
            results[arm] = run_arm(base, sampler, pruner, args, folder)
            seconds[arm] = time.perf_counter() - start

    print(f"quickstart space, {args.trials} trials x {args.steps} steps, {args.seeds} study seeds per arm")
    print("best val loss after n trials (mean over study seeds):")
    header = "".join(f"{'n=' + str(n):>9}" for n in checkpoints)
    print(f"  {'arm':<16}{header}{'steps':>9}{'wall s':>9}")
    best, compute = {}, {}
    for arm, runs in results.items():
        best[arm] = [statistics.fmean(best_after(trials, n) for trials in runs) for n in checkpoints]
        compute[arm] = sum(steps_trained(t, args.steps) for trials in runs for t in trials)
        row = "".join(f"{b:9.4f}" for b in best[arm])
        print(f"  {arm:<16}{row}{compute[arm]:9d}{seconds[arm]:9.1f}")
    pairs = zip(checkpoints, best["tpe"], best["random"], strict=True)
    ratios = ", ".join(f"n={n}: {tpe / random:.4f}" for n, tpe, random in pairs)
    print(f"TPE / random best value (anchor: random): {ratios}")
    pruned, unpruned = compute["tpe"], compute["tpe, no pruning"]
    with_best, without_best = best["tpe"][-1], best["tpe, no pruning"][-1]
    print(
        f"pruning saved {1.0 - pruned / unpruned:.1%} of the steps (TPE {pruned} vs {unpruned} without), "
        f"best value {with_best:.4f} with pruning vs {without_best:.4f} without "
        f"(ratio {with_best / without_best:.4f})"
    )


if __name__ == "__main__":
    main()
