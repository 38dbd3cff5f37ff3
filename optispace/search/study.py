"""A study of a search file: its sampler and pruner, its attributes, created or resumed.

Resuming is the default: the same file against the same storage continues its study. A study
made from a different file is refused (mixing two spaces in one study would make its trials
incomparable); only ``study.trials``, the default N, may change between runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from optispace.errors import UserError
from optispace.search.spec import SearchSpec


def worker_seed(study_seed: int, rank: int) -> int:
    """The sampler seed of worker ``rank``: a SeedSequence of (study seed, rank), 32 bits."""
    return int(np.random.SeedSequence([study_seed, rank]).generate_state(1)[0])


class _GridSampler(optuna.samplers.BruteForceSampler):
    """Optuna's brute force sampler, minus its ``study.stop()`` once the grid is exhausted.

    ``stop`` only works inside ``study.optimize``; this run loop uses ask and tell, and caps the
    number of trials at the size of the grid instead.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Nothing: the run loop knows the grid size."""


def make_sampler(spec: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler the search file names, seeded with this worker's seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            # multivariate + group model the conditional space jointly; the constant liar keeps
            # parallel workers from proposing the same point while trials run.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "grid":
            return _GridSampler(seed=seed)
        if spec.sampler == "gp":
            # Conditional parameters (beta1 only with a momentum) fall back to random sampling
            # by design; Optuna would warn about each of them.
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """The pruner the search file names (pruning acts on the first seed's validation curve)."""
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0, n_min_trials=3)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def study_attrs(spec: SearchSpec) -> dict[str, object]:
    """The study's user attributes (DESIGN.md, Trials), as the report reads them."""
    from optispace.proxies.objectives import OBJECTIVES

    return {
        "search": spec.raw,
        "question": spec.question,
        "tolerance": spec.tolerance,
        "objectives": list(spec.objectives),
        "proxy": spec.proxy.tier,
        "regime": spec.proxy.regime,
        "objective": OBJECTIVES[spec.proxy.regime],
        "penalty": spec.penalty,
        "seeds": list(spec.seeds),
    }


def _comparable(search: dict) -> dict:
    """The search file minus what may change between runs of one study (the default N)."""
    study = {k: v for k, v in search.get("study", {}).items() if k != "trials"}
    return {**search, "study": study}


def _first_difference(a: object, b: object, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path or "(top level)"


def open_study(spec: SearchSpec, storage: optuna.storages.BaseStorage, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it if it exists; refuse to mix two different search files."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=make_sampler(spec, seed),
        pruner=make_pruner(spec),
        directions=["minimize"] * len(spec.objectives),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("search")
    if stored is None:
        for key, value in study_attrs(spec).items():
            study.set_user_attr(key, value)
    elif _comparable(stored) != _comparable(spec.raw):
        key = _first_difference(_comparable(stored), _comparable(spec.raw))
        raise UserError(
            f"study {name!r} exists in this storage with a different search file (first difference: "
            f"{key}); resume it with the file it was made from, or choose another name with --study"
        )
    return study
