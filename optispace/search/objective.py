"""One trial: sample a configuration, train the proxy on each of the search's seeds, record it.

The value is the mean final validation loss over the seeds (and the optimizer state bytes for a
Pareto search). A configuration that diverges on any seed is a *result*, not an error: the trial
completes with the study's penalty value, so the sampler learns that region is bad, and
``failure`` / ``failure_step`` say why and when. The pruner watches the first seed's validation
curve (``trial.report(val_loss, step)``; the user attribute ``curve`` in a Pareto study, where
Optuna has no intermediate values); later seeds run only for configurations that survived it,
so their curves are not reported again at the same steps.

When the search file asks for probes, they watch the first seed, and its results are recorded: each
probe's summary ``value`` as ``probe.<name>``, and the results themselves, without their per-step
``series`` (it grows with the run), as ``probes`` (see :func:`probe_summaries`). Everything a trial
records goes through ``optispace.trial.write``, the one writer of the trial record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna

from optispace.search import scale
from optispace.search.space import Configuration, sample_configuration
from optispace.search.spec import SearchSpec
from optispace.trial import RoleRun, TrialRecord, write

OnEval = Callable[[int, int, float], None]


class Record(Protocol):
    """What a trial reads from ``optispace.proxies.RunRecord``."""

    final_val_loss: float | None
    diverged: str | None
    diverged_step: int | None
    tokens_per_s: float
    wall_time_s: float
    state_bytes: dict[str, int]
    device: str
    corpus: dict[str, Any]
    probes: dict[str, dict[str, Any]]


#: ``trainer(run settings, on_eval) -> record``: the seam tests replace (see :func:`train_config`).
Trainer = Callable[[dict[str, Any], OnEval], Record]


def proxy_trainer(config: dict[str, Any], on_eval: OnEval) -> Record:
    """Train with ``optispace.proxies.train``, the named probes built as its callbacks (no progress
    bar: the study shows one over trials); on ``nproc`` ranks when there are several
    (``optispace.search.ranks``)."""
    from optispace.probes import build
    from optispace.proxies import TrainConfig, train

    settings = dict(config)
    nproc = settings.pop("nproc")
    if nproc > 1:
        from optispace.search.ranks import train_ranks

        return train_ranks(settings, nproc, on_eval)
    probes = build(settings.pop("probes"))
    return train(TrainConfig(**settings), on_eval=on_eval, callbacks=probes, progress=False)


def train_config(
    spec: SearchSpec, configuration: Configuration, seed: int, point: scale.Point | None = None
) -> dict[str, Any]:
    """The settings of one seed of a configuration at a scale ``point`` (``optispace.search.scale``):
    ``TrainConfig`` keyword arguments, ``probes`` and ``nproc`` (the ranks that train it).

    ``probes`` (names) ride on the first seed only: a trial records only that seed's (the seeds are
    distinct).
    """
    proxy, point = spec.proxy, point or {}
    return {
        "recipe": configuration.recipe,
        "proxy": proxy.tier,
        "shape": scale.shape(proxy, spec.scaling, point),
        "tokens": scale.budget(proxy, spec.scaling, point),
        "lr": None,
        "role_lr": scale.role_lr(spec, point, configuration.role_lr),
        "hyperparameters": {},
        "seed": seed,
        "device": proxy.device,
        "data": proxy.data,
        "schedule": proxy.schedule,
        "warmup": proxy.warmup,
        "grad_clip": proxy.grad_clip,
        "eval_every": proxy.eval_every,
        "eval_batches": proxy.eval_batches,
        "compile": proxy.compile,
        "parallel": proxy.parallel,
        "nproc": proxy.nproc,
        "probes": proxy.probes if seed == spec.seeds[0] else (),
        "regime": proxy.regime,
        **proxy.regime_settings,
    }


#: Most bytes of JSON the ``probes`` attribute of a trial may take; Optuna stores user attributes
#: in every storage's log or table, so a study of hundreds of trials must stay small.
PROBES_ATTR_BYTES = 16_000


def probe_summaries(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The probes' results (``record.probes``) made small enough to store on a trial.

    Each result loses its ``series`` (one entry per sampled step: it grows with the run); what is
    left is bounded by the probe's settings (the ray probe's frequency buckets, the per-role
    summaries). Should that still not be JSON or exceed ``PROBES_ATTR_BYTES``, each result keeps
    only its top-level numbers and strings (``value`` always among them).
    """
    kept = {name: {k: v for k, v in result.items() if k != "series"} for name, result in results.items()}
    try:
        size = len(json.dumps(kept))
    except (TypeError, ValueError):
        size = PROBES_ATTR_BYTES + 1
    if size <= PROBES_ATTR_BYTES:
        return kept
    return {
        name: {k: v for k, v in result.items() if v is None or isinstance(v, int | float | str)}
        for name, result in kept.items()
    }


@dataclass
class Objective:
    """The define-by-run objective of a study."""

    spec: SearchSpec
    trainer: Trainer = proxy_trainer

    def __call__(self, trial: optuna.Trial) -> list[float]:
        point = scale.suggest(trial, self.spec.proxy)  # first: the grid sampler branches on it
        configuration = sample_configuration(trial, self.spec)
        _record_configuration(trial, configuration, self.spec, point)
        records: list[Record] = []
        last_step = [0]
        pareto = len(self.spec.objectives) > 1
        for index, seed in enumerate(self.spec.seeds):
            on_eval = _Reporter(trial, last_step, first=index == 0, pareto=pareto)
            try:
                record = self.trainer(train_config(self.spec, configuration, seed, point), on_eval)
            except optuna.TrialPruned:
                raise
            except BaseException as e:
                # Recorded before the trial is told FAIL; the exception still ends the trial.
                write(trial, TrialRecord(failure=f"{_describe(e)} (seed {seed})", failure_step=last_step[0]))
                raise
            records.append(record)
            if record.diverged:
                failure = f"diverged: {record.diverged} (seed {seed})"
                write(trial, TrialRecord(failure=failure, failure_step=record.diverged_step))
                break
        return self._values(trial, records, point)

    def _values(self, trial: optuna.Trial, records: list[Record], point: scale.Point) -> list[float]:
        losses = [r.final_val_loss if not r.diverged else None for r in records]
        losses += [None] * (len(self.spec.seeds) - len(losses))
        per_step = scale.tier(self.spec.proxy, self.spec.scaling, point).tokens_per_step
        write(trial, _run_record(records, losses, per_step, bool(self.spec.proxy.probes)))
        state_bytes = sum(records[0].state_bytes.values())
        diverged = any(loss is None for loss in losses)
        value = self.spec.penalty if diverged else math.fsum(losses) / len(losses)
        return [value, float(state_bytes)] if len(self.spec.objectives) == 2 else [value]


@dataclass
class _Reporter:
    """``on_eval`` of one seed: remembers the step; the first seed also records its curve.

    Single-objective: ``trial.report`` (and pruning). Optuna refuses ``report`` in a
    multi-objective study, so there the curve is the user attribute ``curve``, ``[[step, loss]]``.
    """

    trial: optuna.Trial
    last_step: list[int]
    first: bool
    pareto: bool
    curve: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, step: int, tokens: int, val_loss: float) -> None:
        self.last_step[0] = step
        if not self.first or not math.isfinite(val_loss):
            return
        if self.pareto:
            self.curve.append((step, val_loss))
            write(self.trial, TrialRecord(curve=tuple(self.curve)))
            return
        self.trial.report(val_loss, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val loss {val_loss:.4f})")


def _describe(error: BaseException) -> str:
    """``failure`` text of an exception: interruptions by name, anything else as a crash."""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted: {error}" if str(error) else "interrupted: SIGINT"
    return f"crashed: {type(error).__name__}: {error}"


def _record_configuration(
    trial: optuna.Trial, configuration: Configuration, spec: SearchSpec, point: scale.Point
) -> None:
    """The sampled configuration; its lrs as sampled (under muP, the matrix trains at a scaled one)."""
    roles = {
        role: RoleRun(trained=draw.trained, label=draw.structure, lr=draw.lr)
        for role, draw in configuration.draws.items()
    }
    write(trial, TrialRecord(roles=roles, hp=configuration.hp, seeds=tuple(spec.seeds),
                             regime=spec.proxy.regime, scale=point))


def _run_record(
    records: list[Record], losses: list[float | None], per_step: int, probes: bool
) -> TrialRecord:
    """What the seeds' runs give a trial (``losses``: one per seed of the search); the probes' results
    (``probe_summaries``) are the first seed's."""
    first = records[0]
    missing = (None,) * (len(losses) - len(records))
    metrics = {name: tuple(None if r.diverged or r.metrics.get(name) is None else float(r.metrics[name])
                           for r in records) + missing
               for name in sorted(first.metrics)}
    return TrialRecord(
        roles={role: RoleRun(state_bytes=nbytes) for role, nbytes in first.state_bytes.items()},
        seed_losses=tuple(losses),
        tokens_per_s=math.fsum(r.tokens_per_s for r in records) / len(records),
        wall_time_s=math.fsum(r.wall_time_s for r in records),
        tokens_per_step=per_step,
        device=first.device,
        corpus_fingerprint=first.corpus.get("fingerprint"),
        probe_values={
            name: None if result.get("value") is None else float(result["value"])
            for name, result in first.probes.items()
        },
        probes=probe_summaries(first.probes) if probes else None,
        seed_metrics=metrics,
    )
