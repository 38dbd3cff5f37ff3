"""Report time on a synthetic study of 10,000 trials (target: under 10 s on 2 cores).

The study (``optispace.report.synthetic.random_study``: 4 roles x 2 families of choices, an lr
per role, 2 seeds, 10 evaluations per trial, 4% diverged, 2% pruned, 1% crashed) is built in
memory. The anchor, measured in the same run, is the time to load its trials: a deep copy of every
FrozenTrial, as ``study.get_trials()`` returns them. Then each phase of the report is timed, and the
whole (``build_report`` + ``write_report``) is printed as seconds and as a ratio to the anchor.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_report.py [--trials 10000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna

from optispace.report import analyses, build_report, frames, write_report
from optispace.report.synthetic import random_study


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, made = timed(random_study, args.trials)
    trials, anchor = timed(study.get_trials)
    print(f"synthetic study: {args.trials} trials built in {made:.2f} s (not counted)")
    print(f"anchor: load the trials (get_trials, deep copies): {anchor:.3f} s")

    phases = {}
    trial_frame, phases["trials frame"] = timed(frames.trials_frame, trials)
    _, phases["curves frame"] = timed(frames.curves_frame, trials)
    params, phases["params frame"] = timed(frames.params_frame, trials)
    structs, phases["structures + sufficiency"] = timed(
        lambda: analyses.sufficiency(analyses.structures(trial_frame), 0.02)
    )
    _, phases["choice map"] = timed(analyses.choice_map, structs, trial_frame, params)
    _, phases["importance (PED-ANOVA)"] = timed(analyses.importance, study, params)
    _, phases["Pareto front"] = timed(analyses.pareto_front, trial_frame)
    _, phases["lr sensitivity"] = timed(analyses.lr_sensitivity, trial_frame, structs, 0.02)
    for name, seconds in phases.items():
        print(f"  {name:<26} {seconds:7.3f} s")

    with tempfile.TemporaryDirectory() as folder:
        report, built = timed(build_report, study)
        _, wrote = timed(write_report, report, Path(folder))
    total = built + wrote
    print(f"report: build {built:.2f} s + write (Markdown, 4 PNG, 2 Parquet) {wrote:.2f} s = {total:.2f} s")
    print(f"ratio report / anchor: {total / anchor:.1f}x   (target: total under 10 s on 2 cores)")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")


if __name__ == "__main__":
    main()
