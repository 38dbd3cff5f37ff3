"""Scale axes of a search: the proxy's shape, batch and budget swept as a grid, and ``[scaling]``.

``[proxy]`` may give each of :data:`AXES` (``vocab``, ``dim``, ``layers``, ``heads``,
``batch_size``, ``seq_len``, ``tokens``) as a value, which overrides the tier's, or as a list, an
axis of the study's scale grid: the product of the listed axes, in :data:`AXES` order.

Each trial trains at one point of the grid, recorded twice: as Optuna parameters
``scale.<axis>`` (categorical over the axis's list, suggested before the optimizer's numbers, so
the grid sampler enumerates the optimizer's choices under each point) and as the trial record's
``scale``. :class:`ScaleGrid` picks the point, whatever the search file's sampler: the point with
the fewest live trials (finished, running or queued), ties broken by grid order, so N trials cover
the grid round by round, every point once per round. A trial retried after a SIGKILL or SIGTERM
keeps its point (Optuna queues its parameters again), and a crashed trial's point is the one the
next trial takes, so a resumed study still covers each point exactly once per round.

Workers choosing at the same instant take no lock (a journal file and a database alike): a trial
first gives each running trial numbered below it that has no point yet the one that trial will
choose, in number order, by this same rule, and then takes its own. The storage numbers trials
under its own lock, so every trial below a chooser exists when it reads the study, and two trials
choosing at once each count the other: the higher one by computing the lower one's choice, the
lower one by ignoring (or, once written, counting) the higher one's, which avoids it.

``[scaling]``: the token budget per run is ``[proxy] tokens`` (or a ``tokens`` axis, or ``steps``
times the point's tokens per step), or ``tokens_per_param`` times the point's parameter count (20
is the compute-optimal ratio of Hoffmann et al. 2022, "Chinchilla"). ``lr_rule = "mup"`` trains the
hidden matrices at ``lr * base_dim / dim`` and multiplies the logits by ``base_dim / dim`` (muP,
Yang et al. 2022, "Tensor Programs V", in its readout-multiplier form for Adam-like updates; the
tables, vectors and head keep their lrs), so an lr tuned at ``base_dim`` can be tried at every
width; ``plain`` (the default) changes nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optispace.search.study import PerTrialSampler
from optispace.trial import SCALE_AXES

if TYPE_CHECKING:
    from optispace.proxies.tiers import Tier
    from optispace.search.spec import ProxySpec, ScalingSpec, SearchSpec

#: The scale axes of ``[proxy]`` and the ``TrainConfig.shape`` key each sets (``tokens``: the budget).
AXES: dict[str, str | None] = dict(zip(
    SCALE_AXES, ("vocab_size", "dim", "layers", "heads", "batch_size", "seq_len", None), strict=True))
PREFIX = "scale."
LR_RULES = ("plain", "mup")
#: The role whose lr muP scales with width: the hidden matrices (tables and vectors keep theirs).
MUP_ROLE = "matrix"
_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

Point = dict[str, int]


def grid(sweep: Mapping[str, Sequence[int]]) -> list[Point]:
    """Every point of the scale grid, in order (the last axis fastest); ``[{}]`` when nothing is swept."""
    axes = list(sweep)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*sweep.values())]


def width(proxy: ProxySpec, point: Point) -> int:
    """The model width (``dim``) at ``point``."""
    from optispace.proxies import TIERS

    return {**proxy.shape, **point}.get("dim", TIERS[proxy.tier].model.dim)


def width_ratio(proxy: ProxySpec, scaling: ScalingSpec, point: Point) -> float:
    """``base_dim / dim`` under the muP rule, else 1: the factor on the matrix lr and the logits."""
    if scaling.lr_rule != "mup":
        return 1.0
    return scaling.base_dim / width(proxy, point)


def shape(proxy: ProxySpec, scaling: ScalingSpec, point: Point) -> dict[str, float]:
    """``TrainConfig.shape`` at ``point``: the axes given (not ``tokens``), and muP's output multiplier."""
    given = {**proxy.shape, **point}
    out: dict[str, float] = {AXES[a]: v for a, v in given.items() if AXES[a] is not None}
    if scaling.lr_rule == "mup":
        out["output_mult"] = width_ratio(proxy, scaling, point)
    return out


def tier(proxy: ProxySpec, scaling: ScalingSpec, point: Point) -> Tier:
    """The proxy tier shaped for ``point``; ``ValueError`` when the shape is not a valid model."""
    from optispace.proxies import TIERS
    from optispace.proxies.tiers import shaped

    return shaped(TIERS[proxy.tier], shape(proxy, scaling, point))


def budget(proxy: ProxySpec, scaling: ScalingSpec, point: Point) -> int:
    """Tokens per run at ``point``: the ``tokens`` axis or value, else ``tokens_per_param`` times the
    parameters (rounded up), else ``steps`` times the point's tokens per step."""
    tokens = point.get("tokens", proxy.tokens)
    if tokens is not None:
        return tokens
    if scaling.tokens_per_param is not None:
        return math.ceil(scaling.tokens_per_param * tier(proxy, scaling, point).model.parameters())
    return proxy.steps * tier(proxy, scaling, point).tokens_per_step


def role_lr(spec: SearchSpec, point: Point, lrs: Mapping[str, float]) -> dict[str, float]:
    """The lrs trained at ``point``: the sampled ones, the matrix lr times ``base_dim / dim`` under muP."""
    ratio = width_ratio(spec.proxy, spec.scaling, point)
    return {role: lr * ratio if role == MUP_ROLE else lr for role, lr in lrs.items()}


def suggest(trial: optuna.Trial, proxy: ProxySpec) -> Point:
    """The trial's point: one ``scale.<axis>`` parameter per swept axis (chosen by :class:`ScaleGrid`)."""
    return {axis: trial.suggest_categorical(PREFIX + axis, values) for axis, values in proxy.sweep.items()}


def point_of(params: dict[str, Any], axes: Sequence[str]) -> tuple | None:
    """The grid point in a trial's parameters, or None when it lacks an axis."""
    values = tuple(params.get(PREFIX + axis) for axis in axes)
    return None if any(v is None for v in values) else values


class ScaleGrid(PerTrialSampler):
    """The search file's sampler (per trial, as :class:`PerTrialSampler`) for the optimizer's
    parameters; the ``scale.<axis>`` ones by fewest live trials (see the module doc).

    The scale parameters are kept out of the relative search space, so the wrapped sampler never
    models or proposes them; the point is chosen once per trial, at its first scale parameter.
    """

    def __init__(
        self, build: Callable[[int], optuna.samplers.BaseSampler], study_seed: int, points: list[Point]
    ) -> None:
        super().__init__(build, study_seed)
        self._points = [tuple(p.values()) for p in points]
        self._axes = list(points[0])
        self._chosen: tuple[int, tuple] | None = None

    def choose(self, study: optuna.Study, trial: FrozenTrial) -> tuple:
        """The point with the fewest live trials other than ``trial``, the first in grid order on
        ties, after the running trials numbered below it without a point take theirs (module doc)."""
        count = dict.fromkeys(self._points, 0)
        choosing = 0
        for other in study.get_trials(deepcopy=False, states=_LIVE):
            if other.number == trial.number:
                continue
            # A queued retry, running or not, has its point in fixed_params before its params.
            point = point_of({**other.system_attrs.get("fixed_params", {}), **other.params}, self._axes)
            if point in count:
                count[point] += 1
            elif other.state == TrialState.RUNNING and other.number < trial.number:
                choosing += 1
        for _ in range(choosing + 1):  # theirs first (which takes which does not change the counts)
            point = min(self._points, key=lambda p: (count[p], self._points.index(p)))
            count[point] += 1
        return point

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        space = super().infer_relative_search_space(study, trial)
        return {name: d for name, d in space.items() if not name.startswith(PREFIX)}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        if not param_name.startswith(PREFIX):
            return super().sample_independent(study, trial, param_name, param_distribution)
        if self._chosen is None or self._chosen[0] != trial.number:
            self._chosen = (trial.number, self.choose(study, trial))
        return self._chosen[1][self._axes.index(param_name.removeprefix(PREFIX))]
