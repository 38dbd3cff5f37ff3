"""Synthetic trials follow the DESIGN.md trial contract, so report tests test the real format."""

import optuna
import pytest
from optuna.trial import TrialState

from optispace.report.synthetic import known_trial, random_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROLES = ("embed", "head", "matrix", "vector")
CONTRACT = {
    "structure",
    "hp",
    "seeds",
    "seed_losses",
    "state_bytes",
    "tokens_per_s",
    "wall_time_s",
    "device",
    "corpus_fingerprint",
    "tokens_per_step",
    "worker",
} | {f"{k}.{r}" for k in ("chain", "lr", "state_bytes") for r in ROLES} - {"lr.head", "lr.vector"}


def test_known_trial_carries_every_contract_attribute():
    trial = known_trial("ember", 3e-3)
    assert set(trial.user_attrs) >= CONTRACT
    assert trial.user_attrs["structure"] == " | ".join(
        f"{r}: {trial.user_attrs[f'chain.{r}']}" for r in ROLES
    )
    assert trial.values == [pytest.approx(3.305), float(trial.user_attrs["state_bytes"])]
    assert trial.user_attrs["state_bytes"] == sum(trial.user_attrs[f"state_bytes.{r}"] for r in ROLES)


def test_a_diverged_trial_is_complete_with_the_penalty():
    trial = known_trial("unstable", 1e-2)
    assert trial.state == TrialState.COMPLETE and trial.values[0] == 20.0
    assert trial.user_attrs["failure"] == "non-finite loss" and trial.user_attrs["seed_losses"] == [None] * 3


def test_random_study_has_every_outcome():
    study = random_study(300, seed=1)
    states = {t.state for t in study.trials}
    assert len(study.trials) == 300 and states == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert any("failure" in t.user_attrs and t.state == TrialState.COMPLETE for t in study.trials)
