"""A study of a search file: its sampler and pruner, its attributes, created or resumed.

Resuming is the default: the same file against the same storage continues its study. A study
made from a different file is refused (mixing two spaces in one study would make its trials
incomparable); only ``study.trials``, the default N, may change between runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from optispace.errors import UserError, require
from optispace.search.spec import SearchSpec


def trial_seed(study_seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: a SeedSequence of (study seed, trial number), 32 bits."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


class PerTrialSampler(optuna.samplers.BaseSampler):
    """The search file's sampler, built afresh for each trial and seeded by :func:`trial_seed`.

    A sampler seeded once per worker replays its stream: a resumed study, a rerun after a crash or
    a second host starting with the same seed proposes the configurations it proposed before. Trial
    numbers are unique in a study (the storage assigns them under its lock), so seeding by the
    trial number never repeats a stream; the history the sampler models comes from the storage, so
    nothing of value lives in the discarded instance.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], study_seed: int) -> None:
        self._build = build
        self._study_seed = study_seed
        self._sampler = build(study_seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Build this trial's sampler (Optuna calls this first for every trial it creates)."""
        self._sampler = self._build(trial_seed(self._study_seed, trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


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
    """The sampler the search file names, seeded with ``seed``."""
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
            require("scipy", "gp", 'sampler = "gp"')
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


def open_study(spec: SearchSpec, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load the study, or create it if it does not exist; refuse to mix two different search files.

    Loading comes first: Optuna's journal appends a ``create_study`` record even when the study
    exists, so a refused file would still have written to the storage.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _sampler(spec)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(spec))
    except KeyError:
        study = _create(spec, storage, name, sampler)
    stored = study.user_attrs.get("search")
    if stored is not None and _comparable(stored) != _comparable(spec.raw):
        key = _first_difference(_comparable(stored), _comparable(spec.raw))
        raise UserError(
            f"study {name!r} exists in this storage with a different search file (first difference: "
            f"{key}); resume it with the file it was made from, or choose another name with --study"
        )
    return study


def _sampler(spec: SearchSpec) -> PerTrialSampler:
    """The study's sampler: the search file's, built per trial; scale points assigned by ``ScaleGrid``."""
    from optispace.search.scale import ScaleGrid, grid

    def build(seed: int) -> optuna.samplers.BaseSampler:
        return make_sampler(spec, seed)

    if spec.proxy.sweep:
        return ScaleGrid(build, spec.seed, grid(spec.proxy.sweep))
    return PerTrialSampler(build, spec.seed)


def _create(
    spec: SearchSpec, storage: optuna.storages.BaseStorage, name: str, sampler: PerTrialSampler
) -> optuna.Study:
    """Create the study with its attributes and metric names (another process may win the race)."""
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            pruner=make_pruner(spec),
            directions=["minimize"] * len(spec.objectives),
        )
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(spec))
    for key, value in study_attrs(spec).items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(spec.objectives))  # optuna-dashboard shows them, not "Objective 0"
    return study
