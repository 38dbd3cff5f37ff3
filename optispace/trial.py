"""The trial record: what a search stores on each Optuna trial, and what a report reads back.

A trial of a study is one configuration, trained on each of the search's ``seeds`` (the same seed
list for every trial, so structures can be paired). :class:`TrialRecord` holds everything the
search records beside Optuna's own fields; :func:`write` is the only code that turns it into user
attributes and :func:`read` the only code that turns a ``FrozenTrial`` back into it. A trial is
written in parts (its configuration when sampled, its worker when claimed, its run when trained,
its failure when it fails), so every field is optional, and a running trial reads back partly.

Optuna's own fields:

- ``trial.params``: what was sampled, names ``<role>.<family>`` (choices), ``<role>.lr``,
  ``<role>.beta1``, ... (tied roles sample under the first role's name); ``recipe`` and
  ``<recipe>.lr`` for a search of ``[recipes]``; ``scale.<axis>``, the trial's scale point, for a
  search that sweeps scale axes (``optispace.search.scale``).
- values: ``[mean val loss over seeds]``, or ``[mean val loss, state_bytes]`` for a Pareto search.
  A diverged configuration is COMPLETE with the penalty value ``study.user_attrs["penalty"]`` (so
  the sampler learns the region is bad) and ``failure`` set; a crash is FAIL with ``failure``.
- intermediate values: ``trial.report(val loss, step)`` of the first seed (the pruner's input;
  seeds run one after the other, and later seeds only for configurations that survived). Optuna
  refuses ``trial.report`` in a multi-objective (Pareto) study, so there the curve is the record's
  ``curve``, ``[[step, val_loss], ...]`` (the first seed's evaluations); a report reads the
  intermediate values when a trial has any, else ``curve``.

The user attributes, field by field (attribute names in brackets):

- ``roles``: per role a :class:`RoleRun`: the chain as trained [``trained_chain.<role>``], its
  structure label [``chain.<role>``], the lr [``lr.<role>``] and the optimizer state bytes
  [``state_bytes.<role>``]. The label is the trained chain with the numbers the search tunes
  (``beta1``, ``beta2``, ``weight_decay``) written at the primitives' defaults, so trials that
  differ only in tuned numbers share one label; it has exactly the trained chain's primitives
  (:meth:`RoleRun.__post_init__` refuses any other), so a label never shows a primitive the trial
  did not run. ``structure`` [``structure``] is ``embed: ... | head: ... | matrix: ... | vector:
  ...`` (the labels, in role order) and ``state_bytes`` [``state_bytes``] their total; both are
  computed from the roles, never read back.
- ``hp`` [``hp``]: ``<role>.<number>`` -> value of every tuned number other than lr.
- ``seeds`` [``seeds``]; ``seed_losses`` [``seed_losses``]: per seed the final val loss, ``None``
  where that seed diverged or never ran.
- ``tokens_per_s``, ``wall_time_s``, ``tokens_per_step``, ``device``, ``corpus_fingerprint`` (same
  names; a trial of N ranks, ``[proxy] nproc``, has ``device`` ``cuda:a,cuda:b`` or ``cpu xN``);
  ``worker`` [``worker``]: the int rank of the worker process, a label (the sampler of
  trial k is seeded by the study seed and k, so no resume, rerun or second host repeats a configuration).
- ``probe_values`` [``probe.<name>``]: only when the search file's ``[proxy] probes`` names
  probes (``ray``, ``geometry``, ``outliers``; see ``optispace.probes``): that probe's summary
  ``value`` on the first seed (also when that seed diverged; absent when it crashed or was
  pruned). ``probes`` [``probes``]: name -> the first seed's ``record.probes[name]`` without its
  per-step ``series`` (at most 16 KB of JSON, else each result keeps only its top-level numbers).
- ``failure`` [``failure``]: ``diverged: <reason> (seed s)`` (COMPLETE), ``crashed: <error> (seed
  s)``, ``interrupted: SIGTERM|SIGINT`` (FAIL; queued again), ``surplus: ...`` (FAIL, never
  trained: a worker withdrew it because the study already had N live trials); ``failure_step``
  [``failure_step``].
- ``regime`` [``regime``] and ``scale`` [``scale.<axis>``]: the kind of run and the scale axes of
  the proxy, for searches that vary them (absent otherwise).
- ``seed_metrics`` [``metric.<name>``]: per seed, each of the regime's final measurements
  (``RunRecord.metrics``: sft ``forgetting``, ``pretrain_val_loss_start`` and ``_end``; rl
  ``reward``), ``None`` where that seed diverged or never ran; absent in pretraining, which has none.

``study.user_attrs`` (written by ``optispace.search.study``): ``search`` (the parsed search file as
a dict), ``question``, ``tolerance``, ``objectives``, ``proxy``, ``penalty``, ``seeds``.

Studies written before this module existed load unchanged, except that a label showing a primitive
the trial did not run (a tuned weight decay of 0 written as ``weight_decay(0.01)``) loses that
primitive, as the search now writes it (:func:`without_idle`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optispace.roles import ROLES

if TYPE_CHECKING:
    from optuna.trial import BaseTrial, FrozenTrial

    from optispace.chain import Chain

_PerSeed = tuple[float | None, ...]
#: Primitives that do nothing at a rate of 0 (the named recipes leave them out too).
_IDLE_AT_ZERO_RATE = ("weight_decay", "l2")


@dataclass(frozen=True)
class RoleRun:
    """One role of a trial: the chain trained, its structure label, its lr, its optimizer state."""

    trained: str | None = None
    label: str | None = None
    lr: float | None = None
    state_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.trained is None or self.label is None or self.trained == self.label:
            return
        if primitive_names(self.label) != primitive_names(self.trained):
            raise ValueError(
                f"structure label {self.label!r} does not have the primitives of the chain trained, "
                f"{self.trained!r}; a label may differ from it only in tuned numbers"
            )


@dataclass(frozen=True)
class TrialRecord:
    """Everything a search records on a trial beside Optuna's own fields (see the module doc)."""

    roles: Mapping[str, RoleRun] = field(default_factory=dict)
    hp: Mapping[str, float] | None = None
    seeds: tuple[int, ...] | None = None
    seed_losses: tuple[float | None, ...] | None = None
    tokens_per_s: float | None = None
    wall_time_s: float | None = None
    tokens_per_step: int | None = None
    device: str | None = None
    corpus_fingerprint: str | None = None
    worker: int | None = None
    probe_values: Mapping[str, float | None] = field(default_factory=dict)
    probes: Mapping[str, Any] | None = None
    curve: tuple[tuple[int, float], ...] | None = None
    failure: str | None = None
    failure_step: int | None = None
    regime: str | None = None
    scale: Mapping[str, float] = field(default_factory=dict)
    seed_metrics: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)

    @property
    def structure(self) -> str | None:
        """``embed: ... | head: ... | ...``: every role's label in role order; None while one lacks it."""
        if not self.roles or any(run.label is None for run in self.roles.values()):
            return None
        roles = sorted(self.roles, key=role_sort_key)
        return " | ".join(f"{role}: {self.roles[role].label}" for role in roles)

    @property
    def state_bytes(self) -> int | None:
        """Optimizer state bytes over all roles; None while a role lacks its count."""
        counts = [run.state_bytes for run in self.roles.values()]
        if not counts or any(n is None for n in counts):
            return None
        return sum(counts)


_SCALARS = (
    "tokens_per_s",
    "wall_time_s",
    "tokens_per_step",
    "device",
    "corpus_fingerprint",
    "worker",
    "failure",
    "failure_step",
    "regime",
)
_ROLE_FIELDS = {"trained_chain": "trained", "chain": "label", "lr": "lr", "state_bytes": "state_bytes"}
_PROBE = "probe"
_SCALE = "scale"
_METRIC = "metric"
#: The scale axes a search may sweep (``[proxy]`` keys), in the order a trial's ``scale`` lists them.
SCALE_AXES = ("vocab", "dim", "layers", "heads", "batch_size", "seq_len", "tokens")


def attributes(record: TrialRecord) -> dict[str, Any]:
    """The user attributes of ``record``: one per field that is set, named as the module doc says."""
    attrs: dict[str, Any] = {}
    for role, run in record.roles.items():
        for prefix, name in _ROLE_FIELDS.items():
            if getattr(run, name) is not None:
                attrs[f"{prefix}.{role}"] = getattr(run, name)
    for name, value in (("structure", record.structure), ("state_bytes", record.state_bytes)):
        if value is not None:
            attrs[name] = value
    if record.hp is not None:
        attrs["hp"] = dict(record.hp)
    for name in ("seeds", "seed_losses"):
        if getattr(record, name) is not None:
            attrs[name] = list(getattr(record, name))
    attrs.update({name: getattr(record, name) for name in _SCALARS if getattr(record, name) is not None})
    attrs.update({f"{_PROBE}.{name}": value for name, value in record.probe_values.items()})
    if record.probes is not None:
        attrs["probes"] = dict(record.probes)
    if record.curve is not None:
        attrs["curve"] = [[step, loss] for step, loss in record.curve]
    attrs.update({f"{_SCALE}.{axis}": value for axis, value in record.scale.items()})
    attrs.update({f"{_METRIC}.{name}": list(values) for name, values in record.seed_metrics.items()})
    return attrs


def write(trial: BaseTrial, record: TrialRecord) -> None:
    """Store ``record``'s set fields on ``trial``'s user attributes: the one writer of trials."""
    for key, value in attributes(record).items():
        trial.set_user_attr(key, value)


def read(trial: FrozenTrial) -> TrialRecord:
    """The record stored on ``trial``: the one reader of trials."""
    return from_attributes(trial.user_attrs)


def from_attributes(attrs: Mapping[str, Any]) -> TrialRecord:
    """The record whose :func:`attributes` are ``attrs``; attributes it does not know are ignored."""
    roles, probe_values, scale, seed_metrics = _prefixed(attrs)
    seeds, losses, curve = attrs.get("seeds"), attrs.get("seed_losses"), attrs.get("curve")
    return TrialRecord(
        roles=roles,
        hp=dict(attrs["hp"]) if attrs.get("hp") is not None else None,
        seeds=tuple(int(s) for s in seeds) if seeds is not None else None,
        seed_losses=tuple(_float(x) for x in losses) if losses is not None else None,
        tokens_per_s=_float(attrs.get("tokens_per_s")),
        wall_time_s=_float(attrs.get("wall_time_s")),
        tokens_per_step=_int(attrs.get("tokens_per_step")),
        device=attrs.get("device"),
        corpus_fingerprint=attrs.get("corpus_fingerprint"),
        worker=_int(attrs.get("worker")),
        probe_values=probe_values,
        probes=dict(attrs["probes"]) if attrs.get("probes") is not None else None,
        curve=tuple((int(s), float(v)) for s, v in curve) if curve is not None else None,
        failure=attrs.get("failure"),
        failure_step=_int(attrs.get("failure_step")),
        regime=attrs.get("regime"),
        scale=scale,
        seed_metrics=seed_metrics,
    )


def _prefixed(
    attrs: Mapping[str, Any],
) -> tuple[dict[str, RoleRun], dict[str, float | None], dict[str, float], dict[str, _PerSeed]]:
    """The attributes named ``<prefix>.<name>``, in one pass: the roles' runs, probe values, scale axes,
    per-seed metrics."""
    fields: dict[str, dict[str, Any]] = {}
    probe_values: dict[str, float | None] = {}
    scale: dict[str, float] = {}
    metrics: dict[str, _PerSeed] = {}
    for key, value in attrs.items():
        prefix, _, name = key.partition(".")
        if not name:
            continue
        if prefix in _ROLE_FIELDS:
            fields.setdefault(name, {})[_ROLE_FIELDS[prefix]] = value
        elif prefix == _PROBE:
            probe_values[name] = _float(value)
        elif prefix == _SCALE:
            scale[name] = float(value)
        elif prefix == _METRIC:
            metrics[name] = tuple(_float(x) for x in value)
    runs = {}
    for role in sorted(fields, key=role_sort_key):
        f = fields[role]
        label, trained = _label_as_trained(f.get("label"), f.get("trained"))
        runs[role] = RoleRun(trained, label, _float(f.get("lr")), _int(f.get("state_bytes")))
    return runs, probe_values, scale, metrics


def _label_as_trained(label: str | None, trained: str | None) -> tuple[str | None, str | None]:
    """A stored (label, trained chain) with the primitives the trained chain did not run dropped.

    Searches before this module wrote a tuned weight decay of 0 as ``weight_decay(0.0)`` in the
    trained chain and ``weight_decay(0.01)`` in the label; a text that no longer parses is kept.
    """
    if label is None or trained is None or label == trained:
        return label, trained
    from optispace.chain import parse_chain

    try:
        kept_label, kept_trained = without_idle(parse_chain(label), parse_chain(trained))
    except ValueError:
        return label, trained
    return str(kept_label), str(kept_trained)


def without_idle(label: Chain, trained: Chain) -> tuple[Chain, Chain]:
    """``label`` and ``trained`` without the primitives that do nothing in ``trained``.

    ``label`` is ``trained`` with tuned numbers at their defaults: the same primitives, one to one.
    A decay at rate 0 (``weight_decay(0.0)``, ``l2(0.0)``) does nothing, so neither chain keeps it.
    """
    from optispace.chain import Chain

    if [p.name for p in label.primitives] != [p.name for p in trained.primitives]:
        raise ValueError(f"structure label {label} and trained chain {trained} differ in their primitives")
    kept = [i for i, p in enumerate(trained.primitives) if not _idle(p)]
    return (
        Chain(tuple(label.primitives[i] for i in kept)),
        Chain(tuple(trained.primitives[i] for i in kept)),
    )


def _idle(primitive: Any) -> bool:
    return primitive.name in _IDLE_AT_ZERO_RATE and primitive.rate == 0.0


def primitive_names(text: str) -> list[str]:
    """The primitive names of a canonical chain text, in order (``identity`` has none)."""
    if text == "identity":
        return []
    return [part.split("(", 1)[0].strip() for part in text.split(" > ")]


def role_sort_key(role: str) -> tuple[int, str]:
    """Sort key putting ``optispace.roles.ROLES`` first, in their order, then any other role by name."""
    return (ROLES.index(role), "") if role in ROLES else (len(ROLES), role)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
