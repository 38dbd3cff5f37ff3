"""Trials of a study as polars frames, read straight from Optuna's FrozenTrials (no pandas).

Every column besides Optuna's own comes from the trial's ``optispace.trial.TrialRecord`` (whose
docstring says what a search stores). Every column is nullable: a running trial has few
attributes, a crashed one may lack most of them, and a parameter sampled only under some choices
(a conditional parameter) is null where inactive. Column types come from a schema built over all
trials, never from the first one, so a parameter or attribute that first appears late is kept.

- ``trials_frame``: one row per trial, sorted by trial number; ``regime``, ``scale.<axis>``,
  ``metric.<name>`` (per seed, a list) and ``probe.<name>`` columns (and ``probes``, the probes'
  results as JSON) only when some trial recorded them.
- ``curves_frame``: one row per evaluation (trial, step, tokens, val loss).
- ``params_frame``: one row per sampled parameter: its role, family and distribution.

Categorical parameters are stored as their choice labels (``choice_label``), numeric ones as
Int64 or Float64.
- ``study_info``: the study's name, directions and the attributes the search stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import optuna
import polars as pl
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from optispace.trial import TrialRecord, read, role_sort_key

PARAM_PREFIX = "param."
PROBE_PREFIX = "probe."
METRIC_PREFIX = "metric."

# Per-role columns "<family>.<role>": the record's RoleRun field and the column type.
_ROLE_COLUMNS: dict[str, tuple[str, pl.DataType]] = {
    "chain": ("label", pl.String()),
    "lr": ("lr", pl.Float64()),
    "state_bytes": ("state_bytes", pl.Int64()),
}

# Columns straight from a record field of the same name, and their type.
_HEAD_COLUMNS: dict[str, pl.DataType] = {
    "structure": pl.String(),
    "failure": pl.String(),
    "failure_step": pl.Int64(),
}
_RUN_COLUMNS: dict[str, pl.DataType] = {
    "seeds": pl.List(pl.Int64),
    "seed_losses": pl.List(pl.Float64),
    "tokens_per_s": pl.Float64(),
    "wall_time_s": pl.Float64(),
    "tokens_per_step": pl.Int64(),
    "device": pl.String(),
    "corpus_fingerprint": pl.String(),
    "worker": pl.Int64(),
}


def trial_roles(records: Iterable[TrialRecord]) -> list[str]:
    """The roles any record names, in the canonical role order."""
    return sorted({role for r in records for role in r.roles}, key=role_sort_key)


def trials_frame(trials: Sequence[FrozenTrial]) -> pl.DataFrame:
    """One row per trial: state, failure, chains, lrs, parameters, objectives, costs, seeds.

    Every column but Optuna's own (state, values, params) comes from the trial's
    ``optispace.trial.TrialRecord``. ``val_loss`` is ``values[0]`` of a COMPLETE trial that did not
    diverge; a diverged trial keeps its penalty in ``values`` and has ``diverged`` true and
    ``val_loss`` null, and a pruned one keeps the last intermediate value Optuna stores in ``values``.
    """
    trials = sorted(trials, key=lambda t: t.number)
    records = [read(t) for t in trials]
    roles = trial_roles(records)

    def column(name: str, dtype: pl.DataType, get: Callable[[TrialRecord], Any]) -> pl.Series:
        return pl.Series(name, [get(r) for r in records], dtype=dtype, strict=False)

    columns: dict[str, pl.Series] = {
        "number": pl.Series([t.number for t in trials], dtype=pl.Int64),
        "state": pl.Series([t.state.name for t in trials], dtype=pl.String),
    }
    for name, dtype in _HEAD_COLUMNS.items():
        columns[name] = column(name, dtype, attrgetter(name))
    complete = [t.state == TrialState.COMPLETE for t in trials]
    diverged = [c and r.failure is not None for c, r in zip(complete, records, strict=True)]
    columns["diverged"] = pl.Series(diverged, dtype=pl.Boolean)
    values = [list(t.values) if t.values is not None else None for t in trials]
    columns["values"] = pl.Series(values, dtype=pl.List(pl.Float64))
    # A pruned trial has a value too (Optuna stores its last intermediate value): not a final loss.
    finished = [c and not d for c, d in zip(complete, diverged, strict=True)]
    loss = [v[0] if v and f else None for v, f in zip(values, finished, strict=True)]
    columns["val_loss"] = pl.Series(loss, dtype=pl.Float64)
    for family in ("chain", "lr"):
        for role in roles:
            columns[f"{family}.{role}"] = _role_column(records, family, role)
    columns["state_bytes"] = column("state_bytes", pl.Int64(), attrgetter("state_bytes"))
    for role in roles:
        columns[f"state_bytes.{role}"] = _role_column(records, "state_bytes", role)
    for name, dtype in _RUN_COLUMNS.items():
        columns[name] = column(name, dtype, attrgetter(name))
    columns["hp"] = column("hp", pl.String(), lambda r: _json_or_none(r.hp))
    if any(r.regime is not None for r in records):
        columns["regime"] = column("regime", pl.String(), attrgetter("regime"))
    for axis in sorted({axis for r in records for axis in r.scale}):
        columns[f"scale.{axis}"] = column(f"scale.{axis}", pl.Float64(), lambda r, a=axis: r.scale.get(a))
    for name in sorted({name for r in records for name in r.seed_metrics}):
        columns[METRIC_PREFIX + name] = column(METRIC_PREFIX + name, pl.List(pl.Float64()),
                                               lambda r, n=name: r.seed_metrics.get(n))
    columns.update(_probe_columns(records))
    columns.update(_param_columns(trials))
    return pl.DataFrame(columns)


def curves_frame(trials: Sequence[FrozenTrial]) -> pl.DataFrame:
    """One row per evaluation: trial number, step, tokens, val loss.

    The evaluations are the trial's intermediate values, or, for a multi-objective study (where
    Optuna refuses ``trial.report``), the ``curve`` attribute ``[[step, val_loss], ...]``.
    ``tokens`` is ``step * tokens_per_step`` when the trial recorded ``tokens_per_step``.
    """
    number, step, tokens, loss = [], [], [], []
    for t in trials:
        record = read(t)
        per_step = record.tokens_per_step
        points = t.intermediate_values.items() or record.curve or ()
        for s, v in points:
            number.append(t.number)
            step.append(s)
            tokens.append(s * int(per_step) if per_step is not None else None)
            loss.append(v)
    frame = pl.DataFrame(
        {"number": number, "step": step, "tokens": tokens, "val_loss": loss},
        schema={"number": pl.Int64, "step": pl.Int64, "tokens": pl.Int64, "val_loss": pl.Float64},
        strict=False,
    )
    return frame.sort("number", "step")


def params_frame(trials: Sequence[FrozenTrial]) -> pl.DataFrame:
    """One row per parameter name: role, family, distribution kind, choice labels (JSON), low, high, log.

    A name ``<role>.<family>`` splits at its first dot; the last distribution seen (by trial number)
    describes the parameter.
    """
    dists: dict[str, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        dists.update(t.distributions)
    rows = [_param_row(name, dists[name]) for name in sorted(dists)]
    return pl.DataFrame(
        rows,
        schema={
            "name": pl.String,
            "role": pl.String,
            "family": pl.String,
            "kind": pl.String,
            "choices": pl.String,
            "low": pl.Float64,
            "high": pl.Float64,
            "log": pl.Boolean,
        },
        orient="row",
    )


@dataclass(frozen=True)
class StudyInfo:
    """What a report needs to know about a study besides its trials."""

    name: str
    directions: tuple[str, ...]
    question: str | None = None
    tolerance: float | None = None
    penalty: float | None = None
    objectives: tuple[str, ...] = ()
    proxy: str | None = None
    seeds: tuple[int, ...] = ()
    search: dict[str, Any] = field(default_factory=dict)
    regime: str = "pretrain"
    objective: str = "val_loss"

    @property
    def maximize(self) -> bool:
        """Is the first objective maximized (a reward), so that the best value is the greatest?"""
        return self.directions[:1] == ("maximize",)

    @property
    def objective_words(self) -> str:
        """The first objective in words (``optispace.proxies.objectives.OBJECTIVE_LABELS``)."""
        from optispace.proxies.objectives import OBJECTIVE_LABELS

        return OBJECTIVE_LABELS.get(self.objective, self.objective)


def study_info(study: optuna.Study) -> StudyInfo:
    """Read the study's name, directions and the user attributes the search stored (DESIGN.md)."""
    attrs = study.user_attrs
    tolerance = attrs.get("tolerance")
    penalty = attrs.get("penalty")
    return StudyInfo(
        name=study.study_name,
        directions=tuple(d.name.lower() for d in study.directions),
        question=attrs.get("question"),
        tolerance=float(tolerance) if tolerance is not None else None,
        penalty=float(penalty) if penalty is not None else None,
        objectives=tuple(str(o) for o in attrs.get("objectives", ())),
        proxy=str(attrs["proxy"]) if attrs.get("proxy") is not None else None,
        seeds=tuple(int(s) for s in attrs.get("seeds", ())),
        search=dict(attrs.get("search") or {}),
        regime=str(attrs.get("regime", "pretrain")),
        objective=str(attrs.get("objective", "val_loss")),
    )


def _param_columns(trials: Sequence[FrozenTrial]) -> dict[str, pl.Series]:
    """``param.<name>`` for every name any trial sampled, null where a trial did not sample it."""
    categorical = {
        n for t in trials for n, d in t.distributions.items() if isinstance(d, CategoricalDistribution)
    }
    columns = {}
    for name in sorted({p for t in trials for p in t.params}):
        raw = [t.params.get(name) for t in trials]
        if name in categorical:
            labels = [choice_label(t.params[name]) if name in t.params else None for t in trials]
            columns[PARAM_PREFIX + name] = pl.Series(labels, dtype=pl.String)
        else:
            columns[PARAM_PREFIX + name] = _numeric_series(raw)
    return columns


def probe_names(columns: Iterable[str]) -> list[str]:
    """The probes with a ``probe.<name>`` column among ``columns``, by name."""
    return sorted(c.removeprefix(PROBE_PREFIX) for c in columns if c.startswith(PROBE_PREFIX))


def _probe_columns(records: Sequence[TrialRecord]) -> dict[str, pl.Series]:
    """``probe.<name>`` (Float64) for every probe any trial recorded, then ``probes`` (JSON text)."""
    names = sorted({name for r in records for name in r.probe_values})
    if not names:
        return {}
    columns = {
        PROBE_PREFIX + name: pl.Series([r.probe_values.get(name) for r in records], dtype=pl.Float64)
        for name in names
    }
    columns["probes"] = pl.Series([_json_or_none(r.probes) for r in records], dtype=pl.String)
    return columns


def _role_column(records: Sequence[TrialRecord], family: str, role: str) -> pl.Series:
    """Column ``<family>.<role>``: that field of each record's run of ``role`` (null where absent)."""
    field, dtype = _ROLE_COLUMNS[family]
    values = [getattr(r.roles[role], field) if role in r.roles else None for r in records]
    return pl.Series(f"{family}.{role}", values, dtype=dtype, strict=False)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def choice_label(value: Any) -> str:
    """A categorical choice as text: strings as they are, anything else as JSON (``true``, ``0.9``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _numeric_series(raw: list[Any]) -> pl.Series:
    """Int64 when every present value is an int, else Float64 (Optuna's int and float params)."""
    if all(isinstance(v, int) for v in raw if v is not None):
        return pl.Series(raw, dtype=pl.Int64)
    return pl.Series([None if v is None else float(v) for v in raw], dtype=pl.Float64)


def _param_row(name: str, dist: Any) -> tuple:
    role, _, family = name.partition(".")
    if isinstance(dist, CategoricalDistribution):
        labels = json.dumps([choice_label(c) for c in dist.choices])
        return (name, role, family, "categorical", labels, None, None, False)
    if isinstance(dist, FloatDistribution | IntDistribution):
        kind = "float" if isinstance(dist, FloatDistribution) else "int"
        return (name, role, family, kind, None, float(dist.low), float(dist.high), dist.log)
    return (name, role, family, type(dist).__name__, None, None, None, False)
