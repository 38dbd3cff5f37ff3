"""Trials as a search stores them (``optispace.trial.TrialRecord``), made without training anything.

``make_trial`` builds one FrozenTrial exactly as a search stores it, so reports can be tested on
studies whose answer is known; ``random_study`` fills a study with many such trials for the
report benchmark. Both follow the record only: they import nothing from ``optispace.search``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from optispace.trial import RoleRun, TrialRecord, attributes

LR_RANGE = (1e-4, 1.0)


def make_trial(
    chains: Mapping[str, str],
    seed_losses: Sequence[float | None] = (),
    *,
    choices: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    lrs: Mapping[str, float] | None = None,
    state_bytes: Mapping[str, int] | None = None,
    seeds: Sequence[int] = (0, 1),
    state: TrialState = TrialState.COMPLETE,
    failure: str | None = None,
    failure_step: int | None = None,
    penalty: float = 20.0,
    pareto: bool = False,
    curve: Mapping[int, float] | None = None,
    tokens_per_step: int = 1024,
) -> FrozenTrial:
    """One trial as a search stores it.

    ``chains``: role -> chain text; ``choices``: param name -> (chosen label, all labels);
    ``lrs``: role -> lr, sampled as ``<role>.lr`` on a log scale. A COMPLETE trial's value is the
    mean of ``seed_losses``, or ``penalty`` when ``failure`` is set (a diverged configuration);
    ``pareto`` adds the state bytes as a second objective.
    """
    choices = dict(choices or {})
    lrs = dict(lrs or {})
    state_bytes = dict(state_bytes or {})
    params = {name: chosen for name, (chosen, _) in choices.items()}
    dists = {name: CategoricalDistribution(list(all_)) for name, (_, all_) in choices.items()}
    for role, lr in lrs.items():
        params[f"{role}.lr"] = lr
        dists[f"{role}.lr"] = FloatDistribution(*LR_RANGE, log=True)
    record = TrialRecord(
        roles={r: RoleRun(text, text, lrs.get(r), state_bytes.get(r)) for r, text in chains.items()},
        hp={},
        seeds=tuple(seeds),
        seed_losses=tuple(seed_losses),
        tokens_per_s=1000.0,
        wall_time_s=2.0,
        tokens_per_step=tokens_per_step,
        device="cpu",
        corpus_fingerprint="c0ffee",
        worker=0,
        failure=failure,
        failure_step=failure_step if failure is not None else None,
    )
    values = None
    if state == TrialState.COMPLETE:
        finished = [x for x in seed_losses if x is not None]
        loss = penalty if failure is not None else sum(finished) / len(finished)
        values = [loss, float(record.state_bytes or 0)] if pareto else [loss]
    return optuna.trial.create_trial(
        state=state,
        values=values,
        params=params,
        distributions=dists,
        user_attrs=attributes(record),
        intermediate_values=dict(curve or {}),
    )


def random_study(n_trials: int, *, seed: int = 0, steps: int = 10) -> optuna.Study:
    """An in-memory Pareto study of ``n_trials`` random trials over 3 families in 4 roles.

    Losses follow a smooth made-up law (each choice shifts the loss, lr far from 1e-2 costs a
    quadratic penalty in log10 lr); 4% of trials diverge, 2% are pruned, 1% crash.
    """
    rng = random.Random(seed)
    moments = ["none", "full", "row", "factored"]
    families = {"momentum": ["none", "ema", "nesterov"], "second_moment": moments}
    roles = ("embed", "head", "matrix", "vector")
    study = optuna.create_study(directions=["minimize", "minimize"], study_name="synthetic")
    study.set_user_attr("tolerance", 0.02)
    study.set_user_attr("penalty", 20.0)
    study.set_user_attr("objectives", ["val_loss", "state_bytes"])
    trials = []
    for _ in range(n_trials):
        picked = {(r, f): rng.choice(options) for r in roles for f, options in families.items()}
        chains = {r: " > ".join(f"{f}({picked[r, f]})" for f in families) for r in roles}
        lrs = {r: 10 ** rng.uniform(-4, 0) for r in roles}
        base = 3.0 + sum(0.01 * families[f].index(c) for (_, f), c in picked.items())
        base += sum(0.05 * (math.log10(lr) + 2) ** 2 for lr in lrs.values())
        losses = [base + rng.gauss(0, 0.005) for _ in range(2)]
        state, failure, last = _random_outcome(rng.random(), steps)
        trials.append(
            make_trial(
                chains,
                losses,
                choices={f"{r}.{f}": (picked[r, f], families[f]) for r, f in picked},
                lrs=lrs,
                state_bytes={r: 4096 * (1 + moments.index(picked[r, "second_moment"])) for r in roles},
                state=state,
                failure=failure,
                failure_step=last if failure else None,
                pareto=True,
                curve={s: base + 1.0 / s for s in range(1, last + 1)},
            )
        )
    study.add_trials(trials)
    return study


def _random_outcome(u: float, steps: int) -> tuple[TrialState, str | None, int]:
    """(state, failure, last step reported) for a uniform draw ``u``: 1% crash, 4% diverge, 2% pruned."""
    if u < 0.01:
        return TrialState.FAIL, "crashed: RuntimeError", steps // 2
    if u < 0.05:
        return TrialState.COMPLETE, "non-finite loss", steps
    if u < 0.07:
        return TrialState.PRUNED, None, steps // 2
    return TrialState.COMPLETE, None, steps


# The known study: embed and matrix choices, head and vector fixed to Adam.
_ADAM = "momentum(0.9) > second_moment(full)"
_EMBED = {"full": _ADAM, "factored": "second_moment(factored)", "none": "identity"}
_MATRIX = {"no": _ADAM, "yes": "momentum(0.95) > orthogonalize"}
_EMBED_BYTES = {"full": 512_000, "factored": 4_260, "none": 0}
_MATRIX_BYTES = {"no": 80_000, "yes": 40_000}
# name -> (embed choice, matrix choice, loss at the best lr, per-seed offsets from the seed effect)
KNOWN_STRUCTURES: dict[str, tuple[str, str, float, tuple[float, float, float]]] = {
    "adam": ("full", "no", 3.300, (0.0, 0.0, 0.0)),
    "ember": ("factored", "no", 3.300, (0.004, 0.005, 0.006)),
    "muon": ("full", "yes", 3.318, (-0.006, 0.0, 0.006)),
    "sgd_embed": ("none", "no", 3.400, (0.0, 0.0, 0.0)),
    "unstable": ("factored", "yes", 3.500, (0.0, 0.0, 0.0)),
}
KNOWN_TOLERANCE = 0.02
_SEED_EFFECT = (-0.02, 0.0, 0.02)
_LR_OFFSET = {1e-3: 0.03, 3e-3: 0.0, 1e-2: 0.01}


def known_trial(name: str, lr: float, *, pareto: bool = True, **overrides) -> FrozenTrial:
    """A trial of structure ``name`` of ``KNOWN_STRUCTURES`` at ``lr`` on embed, 10 x ``lr`` on matrix.

    Its seed losses are loss + seed effect + the structure's offset + the lr's offset (0 at 3e-3);
    its curve falls as 1/step to the final mean over steps 100..500. ``unstable`` diverges above
    1e-3. ``overrides`` go to ``make_trial`` (``state``, ``curve``, ``failure``...).
    """
    embed, matrix, loss, offsets = KNOWN_STRUCTURES[name]
    seed_losses = [loss + e + o + _LR_OFFSET[lr] for e, o in zip(_SEED_EFFECT, offsets, strict=True)]
    mean = sum(seed_losses) / len(seed_losses)
    choices = {"embed.second_moment": (embed, list(_EMBED)), "matrix.orthogonalize": (matrix, list(_MATRIX))}
    kwargs: dict = {
        "seeds": (0, 1, 2),
        "curve": {s: mean + 50.0 / s - 0.1 for s in range(100, 501, 100)},
        "pareto": pareto,
    }
    if name == "unstable" and lr > 1e-3:
        kwargs.update(failure="non-finite loss", failure_step=200, curve={100: 6.0})
        seed_losses = [None, None, None]
    kwargs.update(overrides)
    trial = make_trial(
        {"embed": _EMBED[embed], "head": _ADAM, "matrix": _MATRIX[matrix], "vector": _ADAM},
        seed_losses,
        choices=choices,
        lrs={"embed": lr, "matrix": 10 * lr},
        state_bytes={
            "embed": _EMBED_BYTES[embed],
            "head": 512_000,
            "matrix": _MATRIX_BYTES[matrix],
            "vector": 2_000,
        },
        **kwargs,
    )
    if matrix == "yes":
        # A conditional parameter: sampled only when the matrix chain orthogonalizes.
        trial.params["matrix.ns_steps"] = 5
        trial.distributions["matrix.ns_steps"] = IntDistribution(3, 7)
    return trial


def known_study(
    storage: str | optuna.storages.BaseStorage | None = None, *, pareto: bool = True
) -> optuna.Study:
    """A study whose answer is known, in ``storage`` (in memory when None) under the name ``known``.

    With tolerance 0.02: ``adam`` is best (3.300 at lr 3e-3), ``ember`` (+0.005) and ``muon``
    (+0.018, paired se 0.0035: borderline) suffice, ``sgd_embed`` (+0.1) and ``unstable`` do not.
    Each structure ran at lr 1e-3, 3e-3, 1e-2; ``muon`` trials come last, so its conditional
    ``matrix.ns_steps`` first appears late. One trial crashed (FAIL), one was pruned, one is running.
    """
    study = optuna.create_study(
        storage=storage,
        study_name="known",
        directions=["minimize", "minimize"] if pareto else ["minimize"],
    )
    for key, value in {
        "question": "Which optimizer structures suffice on the token tables?",
        "tolerance": KNOWN_TOLERANCE,
        "objectives": ["val_loss", "state_bytes"] if pareto else ["val_loss"],
        "proxy": "tiny",
        "penalty": 20.0,
        "seeds": [0, 1, 2],
        "search": {"proxy": "tiny", "tokens": 512_000},
    }.items():
        study.set_user_attr(key, value)
    order = [n for n in KNOWN_STRUCTURES if n != "muon"] + ["muon"]
    trials = [known_trial(n, lr, pareto=pareto) for n in order for lr in _LR_OFFSET]
    trials.append(
        known_trial("adam", 1e-2, pareto=pareto, state=TrialState.FAIL, failure="crashed: out of memory")
    )
    trials.append(
        known_trial("sgd_embed", 1e-2, pareto=pareto, state=TrialState.PRUNED, curve={100: 4.0, 200: 3.9})
    )
    trials.append(known_trial("ember", 1e-2, pareto=pareto, state=TrialState.RUNNING, curve={100: 3.9}))
    study.add_trials(trials)
    return study
