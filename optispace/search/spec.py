"""A search file (TOML) turned into a validated :class:`SearchSpec`.

Everything a study needs is checked here, before any storage is touched: a mistake gets one
:class:`~optispace.errors.UserError` naming the file, the line, the key, what was wrong and what is
allowed. The layout (see ``searches/smoke.toml`` for a commented example)::

    [study]   name, question, tolerance, seed, trials, seeds, objectives, sampler, pruner, penalty
    [proxy]   tier, data, tokens | steps, eval_every, eval_batches, schedule, warmup, grad_clip,
              device, compile, threads (CPU threads per worker; default: the cores shared out),
              nproc (ranks per trial, default 1; ``optispace.search.ranks``), parallel (ddp | fsdp2),
              probes (names from ``optispace.probes.PROBES`` recorded on each trial; default none),
              regime (pretrain, sft or rl; default pretrain) and its settings (REGIME_KEYS),
              vocab, dim, layers, heads, batch_size, seq_len, tokens: a value (overrides the tier's)
              or a list (a scale axis, swept as a grid; see ``optispace.search.scale``)
    [scaling] tokens_per_param (the budget rule, instead of tokens | steps), lr_rule (plain | mup),
              base_dim (the width the lrs are tuned at under mup; default the least width)
    [roles.<role>]  one of: chain = "text" | tie = "<role>" | <family> = [choices, ...]
                    and lr, beta1, beta2, weight_decay: a number (fixed), [low, high] (a range;
                    log-uniform for lr) or {values = [...]} (a choice among numbers)
    [recipes]       instead of [roles]: named recipes (``optispace recipes``), each with its own lr,
                    e.g. ``adamw = {lr = {values = [1e-3, 3e-3]}}``; the key is a label, ``recipe``
                    names the recipe when it differs, other keys are its hyperparameters, e.g.
                    ``ember_row = {recipe = "ember", bias_correction = "row", lr = 1e-3}``
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optispace.errors import UserError
from optispace.search.families import FAMILIES, ROLE_SHAPES, incompatible_choice, uses
from optispace.search.locate import key_lines, line_of

if TYPE_CHECKING:
    from optispace.recipes import Recipe

ROLES = ("embed", "head", "matrix", "vector")
#: Bounds that keep a typo from running for ever or exhausting memory (a study name must also fit
#: Optuna's RDB column of 512 characters; seeds fit a signed 64-bit integer, as the report stores them).
MAX_NAME = 512
MAX_SEED = 2**63 - 1
MAX_STEPS = 10**9
MAX_TOKENS = 10**13
MAX_EVAL_TOKENS = 2**26
MAX_GRID = 10_000
#: A byte-level BPE has 256 byte symbols and the end-of-text token before its first merge.
MIN_TEXT_VOCAB = 257
SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = (("val_loss",), ("val_loss", "state_bytes"))


@dataclass(frozen=True)
class Range:
    """A number sampled from ``[low, high]``, log-uniformly when ``log``."""

    low: float
    high: float
    log: bool


@dataclass(frozen=True)
class Values:
    """A number chosen among ``values`` (categorical: enumerable by the grid sampler)."""

    values: tuple[float, ...]


Number = float | Range | Values


@dataclass(frozen=True)
class RoleSpace:
    """What one role may be: a fixed ``chain``, a ``tie`` to another role, or family choices."""

    role: str
    chain: str | None = None
    tie: str | None = None
    families: dict[str, tuple[str, ...]] = field(default_factory=dict)
    numbers: dict[str, Number] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeChoice:
    """One ``[recipes]`` entry: the recipe trained, its lr, and the hyperparameters given (only those)."""

    recipe: str
    lr: Number
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxySpec:
    """How each trial trains its proxy (passed on to ``optispace.proxies.TrainConfig``)."""

    tier: str
    data: str | None
    tokens: int | None
    steps: int | None
    eval_every: int
    eval_batches: int
    schedule: str
    warmup: float
    grad_clip: float
    device: str
    compile: bool
    threads: int | None
    probes: tuple[str, ...]
    #: Scale axes given as one value (``tokens`` excepted: it is ``tokens``), by axis name.
    shape: dict[str, int] = field(default_factory=dict)
    #: Scale axes given as a list: the grid, by axis in ``optispace.search.scale.AXES`` order.
    sweep: dict[str, tuple[int, ...]] = field(default_factory=dict)
    regime: str = "pretrain"
    regime_settings: dict[str, Any] = field(default_factory=dict)
    #: Ranks that train each trial, data-parallel (``optispace.search.ranks``), and how they share it.
    nproc: int = 1
    parallel: str = "ddp"


@dataclass(frozen=True)
class ScalingSpec:
    """``[scaling]``: the token budget and lr rules (``optispace.search.scale``)."""

    tokens_per_param: float | None = None
    lr_rule: str = "plain"
    base_dim: int | None = None


@dataclass(frozen=True)
class SearchSpec:
    """A validated search file. ``raw`` is the file as parsed, stored on the study."""

    path: str
    name: str
    question: str
    tolerance: float
    seed: int
    trials: int
    seeds: tuple[int, ...]
    objectives: tuple[str, ...]
    sampler: str
    pruner: str
    penalty: float
    proxy: ProxySpec
    roles: dict[str, RoleSpace]
    raw: dict[str, Any]
    scaling: ScalingSpec = ScalingSpec()
    #: ``[recipes]``: label -> the recipe, lr and hyperparameters it names (then ``roles`` is empty).
    recipes: dict[str, RecipeChoice] = field(default_factory=dict)
    #: The line of each key in the file, for errors found after parsing (:meth:`error`).
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def error(self, key: tuple[str, ...], problem: str) -> UserError:
        """A mistake of the file found when the search starts, named as a parse error is."""
        return _blame(self.path, self.lines, key, problem)


_MISSING = object()


class _File:
    """The parsed file plus what is needed to blame a key: its path and the line of each key."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)

    def error(self, key: tuple[str, ...], problem: str) -> UserError:
        return _blame(self.path, self.lines, key, problem)


def _blame(path: str, lines: dict[tuple[str, ...], int], key: tuple[str, ...], problem: str) -> UserError:
    """``PATH:LINE: KEY: PROBLEM``, the line where ``key`` is declared (the file alone if nowhere)."""
    line = line_of(lines, key)
    where = f"{path}:{line}" if line is not None else path
    return UserError(f"{where}: {'.'.join(key)}: {problem}")


class _Table:
    """One TOML table being read: typed look-ups, then :meth:`done` rejects what was not read."""

    def __init__(self, file: _File, key: tuple[str, ...], data: Any) -> None:
        if not isinstance(data, dict):
            raise file.error(key, f"must be a table, not {_kind(data)}")
        self.file, self.key, self.data = file, key, data
        self.read: set[str] = set()

    def error(self, name: str, problem: str) -> UserError:
        return self.file.error(self.key + (name,), problem)

    def get(self, name: str, check: Callable[[Any], str | None], default: Any = _MISSING) -> Any:
        """The value of ``name`` after ``check`` (which returns a problem or None)."""
        self.read.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.file.error(self.key, f"missing key {name!r}")
            return default
        value = self.data[name]
        problem = check(value)
        if problem is not None:
            raise self.error(name, problem)
        return value

    def table(self, name: str) -> _Table:
        self.read.add(name)
        if name not in self.data:
            raise self.file.error(self.key, f"missing table [{'.'.join(self.key + (name,))}]")
        return _Table(self.file, self.key + (name,), self.data[name])

    def done(self, allowed: tuple[str, ...] | None = None) -> None:
        for name in self.data:
            if name not in self.read:
                known = ", ".join(allowed if allowed is not None else sorted(self.read))
                raise self.error(name, f"unknown key; allowed here: {known}")


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string, not {value!r}"


def study_name_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a study name, or None."""
    problem = _string(value)
    if problem is None and len(value) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters, not {len(value)}"
    return problem


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"{value!r} is not allowed; choose one of {', '.join(allowed)}"

    return check


def _integer(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        integer = isinstance(value, int) and not isinstance(value, bool)
        if integer and value >= low and (high is None or value <= high):
            return None
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        return f"must be an integer {bound}, not {value!r}"

    return check


def _real(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[Any], str | None]:
    """A finite number in the interval from ``low`` to ``high`` (ends open or closed)."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if (
            ok
            and (value > low if open_low else value >= low)
            and (value < high if open_high else value <= high)
        ):
            return None
        bound = f"> {low}" if open_low else f">= {low}"
        if high != math.inf:
            bound += f" and {'<' if open_high else '<='} {high}"
        return f"must be a number {bound}, not {value!r}"

    return check


NUMBER_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "lr": _real(0.0, open_low=True),
    "beta1": _real(0.0, 1.0, open_high=True),
    "beta2": _real(0.0, 1.0, open_high=True),
    "weight_decay": _real(0.0),
}


def _device(value: Any) -> str | None:
    if value in ("auto", "cpu"):
        return None
    if not (isinstance(value, str) and re.fullmatch(r"cuda(:\d+)?", value)):
        return f"{value!r} is not allowed; use auto, cpu, cuda or cuda:N"
    from optispace.proxies.train import resolve_device

    try:
        resolve_device(value)
    except UserError as e:
        return str(e).removeprefix("device: ")
    return None


def _data(vocab: int) -> Callable[[Any], str | None]:
    """A data source ``train`` accepts (checked by its form, not loaded) for a model of ``vocab``."""

    def check(value: Any) -> str | None:
        problem = None if value is None else _string(value)
        if problem:
            return problem
        from optispace.proxies.data import check_data

        try:
            check_data(value, vocab)
        except UserError as e:
            return str(e).removeprefix("data: ")
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {value!r}"


def _seed_list(value: Any) -> str | None:
    ints = isinstance(value, list) and all(_integer(0, MAX_SEED)(v) is None for v in value)
    if not ints or not value:
        return f"must be a non-empty array of integers from 0 to {MAX_SEED}, not {value!r}"
    return None if len(set(value)) == len(value) else f"has a repeated seed: {value!r}"


def _probe_names(value: Any) -> str | None:
    from optispace.probes import PROBES

    known = ", ".join(PROBES)
    if not isinstance(value, list):
        return f"must be an array of probe names from {known}, not {value!r}"
    for name in value:
        if name not in PROBES:
            return f"unknown probe {name!r}; known probes: {known}"
    return None if len(set(value)) == len(value) else f"has a repeated probe: {value!r}"


def _objectives(value: Any) -> str | None:
    if isinstance(value, list) and tuple(value) in OBJECTIVES:
        return None
    return f"{value!r} is not allowed; choose {' or '.join(repr(list(o)) for o in OBJECTIVES)}"


def parse_search(path: str | Path) -> SearchSpec:
    """Read and validate the search file at ``path``; raise ``UserError`` on any mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read search file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a search file is TOML, in UTF-8") from None
    return parse_search_text(text, str(path))


def parse_search_text(text: str, path: str = "<search>") -> SearchSpec:
    """Validate the TOML ``text`` of a search file (``path`` names it in messages)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if "at end of document" in message:
            message += f" (line {max(1, len(text.splitlines()))})"
        raise UserError(f"{path}: invalid TOML: {message}") from None
    return parse_search_data(raw, path, text)


def parse_search_data(raw: dict[str, Any], path: str = "<search>", text: str = "") -> SearchSpec:
    """Validate a search file's tables already parsed (``text``, when known, places keys on lines)."""
    file = _File(path, text)
    top = _Table(file, (), raw)
    study = top.table("study")
    scaling_table = _Table(file, ("scaling",), raw.get("scaling", {}))
    top.read.add("scaling")
    tokens_per_param = scaling_table.get("tokens_per_param", _real(0.0, open_low=True), None)
    proxy = _proxy(top.table("proxy"), budget_rule=tokens_per_param is not None)
    scaling = _scaling(scaling_table, proxy, tokens_per_param)
    if "recipes" in raw and "roles" in raw:
        raise top.error("recipes", "give either [roles] (a space of chains) or [recipes], not both")
    recipes = _recipes(top.table("recipes")) if "recipes" in raw else {}
    roles = {} if recipes else _roles(top.table("roles"))
    top.done(("study", "proxy", "roles", "recipes", "scaling"))

    name = study.get("name", study_name_problem)
    question = study.get("question", _string)
    tolerance = float(study.get("tolerance", _real(0.0, open_low=True), 0.01))
    seed = study.get("seed", _integer(0, MAX_SEED), 0)
    trials = study.get("trials", _integer(1), 20)
    seeds = tuple(study.get("seeds", _seed_list, [0]))
    objectives = tuple(study.get("objectives", _objectives, ["val_loss"]))
    sampler = study.get("sampler", _one_of(SAMPLERS), "tpe")
    prunable = len(objectives) == 1 and not proxy.sweep and proxy.nproc == 1
    pruner = study.get("pruner", _one_of(PRUNERS), "median" if prunable else "none")
    penalty = float(study.get("penalty", _real(0.0, open_low=True), 20.0))
    study.done()
    if len(objectives) > 1 and pruner != "none":
        raise study.error(
            "pruner", f'pruning needs a single objective; use pruner = "none" with {objectives}'
        )
    if proxy.sweep and pruner != "none":
        raise study.error(
            "pruner", f'a pruner would compare curves across the scale axes {", ".join(proxy.sweep)}; '
            'use pruner = "none"'
        )
    if proxy.nproc > 1 and pruner != "none":
        raise study.error(
            "pruner", f"a pruner stops a trial mid-run, a decision that would have to reach each of its "
            f'{proxy.nproc} ranks (proxy.nproc); use pruner = "none"'
        )
    if sampler == "grid":
        _check_enumerable(file, roles, recipes)
    return SearchSpec(
        path=path,
        name=name,
        question=question,
        tolerance=tolerance,
        seed=seed,
        trials=trials,
        seeds=seeds,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        penalty=penalty,
        proxy=proxy,
        roles=roles,
        raw=raw,
        scaling=scaling,
        recipes=recipes,
        lines=file.lines,
    )


def _proxy(table: _Table, budget_rule: bool = False) -> ProxySpec:
    from optispace.proxies import TIERS
    from optispace.proxies.distributed import MAX_NPROC, PARALLEL
    from optispace.proxies.regime import REGIMES
    from optispace.proxies.train import SCHEDULES
    from optispace.search.scale import AXES, grid

    for name, value in table.data.items():
        if isinstance(value, list) and name not in AXES and name != "probes":
            raise table.error(
                name, f"takes one value, not a list; only {', '.join(AXES)} may be a list to sweep"
            )
    fixed, sweep = _scale_axes(table)
    tokens = fixed.pop("tokens", None)
    steps = table.get("steps", _integer(1, MAX_STEPS), None)
    budgets = (("tokens", tokens or sweep.get("tokens")), ("steps", steps))
    given = [name for name, v in budgets if v is not None]
    if budget_rule and given:
        raise table.error(given[0], "the budget is [scaling] tokens_per_param; leave out tokens and steps")
    if not budget_rule and len(given) != 1:
        raise table.file.error(table.key, "give the budget per trial as exactly one of 'tokens' or 'steps'")
    tier_name = table.get("tier", _one_of(tuple(TIERS)))
    tier = TIERS[tier_name]
    vocabs = sweep.get("vocab") or (fixed.get("vocab", tier.model.vocab_size),)
    vocab_given = "vocab" in fixed or "vocab" in sweep
    data = table.get("data", _string, None)
    for vocab in vocabs:
        problem = _data(vocab)(data)
        if problem:
            at = f" (vocab {vocab})" if len(vocabs) > 1 else ""
            raise table.error("vocab" if vocab_given else "data", problem + at)
    if vocab_given:
        _check_vocabs(table, data, vocabs)
    per_step = max(
        p.get("batch_size", fixed.get("batch_size", tier.batch_size))
        * p.get("seq_len", fixed.get("seq_len", tier.model.seq_len))
        for p in grid(sweep)
    )
    max_batches = max(1, MAX_EVAL_TOKENS // per_step)
    spec = ProxySpec(
        tier=tier_name,
        data=data,
        tokens=tokens,
        steps=steps,
        eval_every=table.get("eval_every", _integer(1), 50),
        eval_batches=table.get("eval_batches", _integer(1, max_batches), 8),
        schedule=table.get("schedule", _one_of(SCHEDULES), "cosine"),
        warmup=float(table.get("warmup", _real(0.0, 1.0), 0.1)),
        grad_clip=float(table.get("grad_clip", _real(0.0), 1.0)),
        device=table.get("device", _device, "auto"),
        compile=table.get("compile", _boolean, False),
        threads=table.get("threads", _integer(1), None),
        probes=tuple(table.get("probes", _probe_names, [])),
        shape=fixed,
        sweep=sweep,
        regime=table.get("regime", _one_of(REGIMES), "pretrain"),
        regime_settings={key: table.get(key, check) for key, check in _regime_keys().items()
                         if key in table.data},
        nproc=table.get("nproc", _integer(1, MAX_NPROC), 1),
        parallel=table.get("parallel", _one_of(PARALLEL), "ddp"),
    )
    table.done()
    if spec.regime == "pretrain" and spec.regime_settings:
        raise table.error(next(iter(spec.regime_settings)), 'a setting of regime "sft" or "rl"; set regime')
    if spec.nproc > 1:
        _check_ranks(table, spec, [p.get("batch_size", fixed.get("batch_size", tier.batch_size))
                                   for p in grid(sweep)])
    return spec


def _check_ranks(table: _Table, spec: ProxySpec, batch_sizes: list[int]) -> None:
    """What ``optispace train --nproc`` refuses, refused for a search's ``nproc`` ranks per trial."""
    n = spec.nproc
    if re.fullmatch(r"cuda:\d+", spec.device):
        raise table.error("nproc", f'{n} ranks need a GPU each, and device = "{spec.device}" pins one; use '
                          f'device = "cuda" (local worker k then trains on GPUs k*{n} .. k*{n}+{n - 1})')
    if spec.regime != "pretrain":
        raise table.error("nproc", f"regime {spec.regime} trains in one process for now; use nproc = 1")
    for batch in batch_sizes:
        if batch % n:
            raise table.error("nproc", f"{n} ranks cannot split the batch of {batch} sequences evenly; "
                              f"use a number that divides {batch}")
    if spec.probes and spec.parallel == "fsdp2":
        raise table.error("probes", 'probes read whole parameters on rank 0, which parallel = "fsdp2" '
                          'shards over the ranks; use parallel = "ddp" for probes')


def _check_vocabs(table: _Table, data: str | None, vocabs: tuple[int, ...]) -> None:
    """Each vocabulary one the text corpus can give (``optispace.proxies.data.vocab_range``)."""
    from optispace.proxies.data import vocab_range

    limits = vocab_range(data)
    if limits is None:
        return
    low, high, name = limits
    for vocab in vocabs:
        if not low <= vocab <= high:
            raise table.error(
                "vocab", f"{vocab} is not a vocabulary {name} can give: a byte-level BPE of it has "
                f"from {low} to at most {high:,} tokens"
            )


def _scale_axes(table: _Table) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """The scale axes ``table`` gives: one value each (fixed), or a list each (swept), in axis order."""
    from optispace.search.scale import AXES

    fixed: dict[str, int] = {}
    sweep: dict[str, tuple[int, ...]] = {}
    for axis in AXES:
        low, high = (2, None) if axis == "vocab" else (1, MAX_TOKENS if axis == "tokens" else None)
        check = _integer(low, high)
        value = table.get(axis, lambda v, c=check: _axis_values(v, c), None)
        if isinstance(value, list):
            sweep[axis] = tuple(value)
        elif value is not None:
            fixed[axis] = value
    size = math.prod(len(v) for v in sweep.values())
    if size > MAX_GRID:
        raise table.error(next(iter(sweep)), f"the scale grid has {size} points; at most {MAX_GRID}")
    return fixed, sweep


def _axis_values(value: Any, check: Callable[[Any], str | None]) -> str | None:
    """One value, or a non-empty list of distinct values, each passing ``check``."""
    if not isinstance(value, list):
        return check(value)
    if not value:
        return "an empty list sweeps nothing; give one value or a list of values"
    for v in value:
        problem = check(v)
        if problem:
            return f"list value {problem}"
    return None if len(set(value)) == len(value) else f"has a repeated value: {value!r}"


def _scaling(table: _Table, proxy: ProxySpec, tokens_per_param: float | None) -> ScalingSpec:
    """``[scaling]`` read, and every point of the grid checked: a valid model, a budget of a step or more."""
    from optispace.search.scale import LR_RULES

    lr_rule = table.get("lr_rule", _one_of(LR_RULES), "plain")
    dims = proxy.sweep.get("dim") or (proxy.shape.get("dim"),)
    base_dim = table.get("base_dim", _integer(1), None)
    if lr_rule == "mup" and base_dim is None:
        from optispace.proxies import TIERS

        base_dim = min(d if d is not None else TIERS[proxy.tier].model.dim for d in dims)
    if lr_rule != "mup" and base_dim is not None:
        raise table.error("base_dim", 'is the muP base width; set lr_rule = "mup" or leave it out')
    table.done(("tokens_per_param", "lr_rule", "base_dim"))
    scaling = ScalingSpec(tokens_per_param=tokens_per_param, lr_rule=lr_rule, base_dim=base_dim)
    _check_points(table, proxy, scaling)
    return scaling


def _check_points(scaling_table: _Table, proxy: ProxySpec, scaling: ScalingSpec) -> None:
    from optispace.search import scale

    blame_shape = next((a for a in ("heads", "dim") if a in proxy.sweep), None) or next(
        (a for a in ("heads", "dim") if a in proxy.shape), "tier"
    )
    proxy_key = ("proxy",)
    for point in scale.grid(proxy.sweep):
        at = f" at {_describe(point)}" if point else ""
        try:
            tier = scale.tier(proxy, scaling, point)
        except ValueError as e:
            raise scaling_table.file.error(proxy_key + (blame_shape,), f"{e}{at}") from None
        tokens = scale.budget(proxy, scaling, point)
        if tokens < tier.tokens_per_step:
            rule = scaling.tokens_per_param is not None
            key = ("scaling", "tokens_per_param") if rule else ("proxy", "tokens")
            raise scaling_table.file.error(
                key, f"gives {tokens} tokens{at}, fewer than one step of {tier.tokens_per_step} "
                "(batch_size * seq_len)"
            )


def _describe(point: dict[str, int]) -> str:
    return ", ".join(f"{axis} = {value}" for axis, value in point.items())


def _checkpoint(value: Any) -> str | None:
    problem = _string(value)
    if problem is None and not Path(value).is_file():
        return f"{value!r} is not a checkpoint file (write one with `optispace train --checkpoint`)"
    return problem


def _pairs(value: Any) -> str | None:
    from optispace.proxies.tasks import TASKS

    if isinstance(value, str) and value.startswith("task:"):
        return None if value.removeprefix("task:") in TASKS else f"{value!r}: tasks are {', '.join(TASKS)}"
    return _string(value) or (None if Path(value).is_file() else f"{value!r} is not a JSONL file of pairs")


def _regime_keys() -> dict[str, Callable[[Any], str | None]]:
    """``[proxy]`` keys of the sft and rl regimes (``TrainConfig`` fields of the same names)."""
    from optispace.proxies.tasks import TASKS
    from optispace.proxies.train import NEW_ROWS

    return {"init": _checkpoint, "pairs": _pairs, "new_rows": _one_of(NEW_ROWS),
            "task": _one_of(tuple(TASKS)), "group_size": _integer(2), "clip": _real(0.0, open_low=True),
            "kl": _real(0.0), "updates_per_batch": _integer(1), "format_steps": _integer(1)}


def _roles(table: _Table) -> dict[str, RoleSpace]:
    for name in table.data:
        if name not in ROLES:
            raise table.error(name, f"unknown role; the roles are {', '.join(ROLES)}")
    spaces = {role: _role(table.table(role)) for role in ROLES}
    for role, space in spaces.items():
        if space.tie is None:
            continue
        if space.tie not in ROLES or space.tie == role:
            raise table.file.error(("roles", role, "tie"), f"must name another role ({', '.join(ROLES)})")
        if spaces[space.tie].tie is not None:
            raise table.file.error(
                ("roles", role, "tie"),
                f"ties to {space.tie!r}, which is tied itself; tie to the role it names",
            )
        owner = spaces[space.tie]
        for family, choices in owner.families.items():
            for choice in choices:
                problem = incompatible_choice(role, family, choice)
                if problem:
                    raise table.file.error(
                        ("roles", role, "tie"), f"cannot share {space.tie}'s choices: {problem}"
                    )
    return spaces


def _recipes(table: _Table) -> dict[str, RecipeChoice]:
    """``[recipes]``: per label, a recipe (``recipe = "name"``; default: the label), its
    hyperparameters (checked by the recipe) and its lr (a number, a range or ``{values = [...]}``)."""
    from optispace.recipes import RECIPES

    if not table.data:
        raise table.file.error(table.key, f"name at least one recipe: {', '.join(RECIPES)}")
    recipes = {}
    for label in table.data:
        entry = table.table(label)
        name = entry.get("recipe", _one_of(tuple(RECIPES)), label)
        if name not in RECIPES:
            raise table.error(label, f"unknown recipe; the recipes are {', '.join(RECIPES)} (or name "
                              'one with recipe = "..." and use this key as its label)')
        recipe = RECIPES[name]
        allowed = ("recipe", "lr", *recipe.defaults)
        hyperparameters = {key: entry.get(key, _hyperparameter(recipe, key)) for key in recipe.defaults
                           if key in entry.data}
        try:
            recipe.chains(**hyperparameters)
        except ValueError as e:
            raise table.error(label, str(e)) from None
        resolved = recipe.resolve(hyperparameters)  # a TOML array as the tuple the recipe takes
        recipes[label] = RecipeChoice(name, _number(entry, "lr"), {k: resolved[k] for k in hyperparameters})
        entry.done(allowed)
    return recipes


def _hyperparameter(recipe: Recipe, key: str) -> Callable[[Any], str | None]:
    """A value of ``recipe``'s hyperparameter ``key`` that its chains build with."""

    def check(value: Any) -> str | None:
        try:
            recipe.chains(**{key: value})
        except ValueError as e:
            return str(e)
        return None

    return check


def _role(table: _Table) -> RoleSpace:
    role = table.key[-1]
    if "tie" in table.data:
        tie = table.get("tie", _string)
        table.done(("tie",))
        return RoleSpace(role=role, tie=tie)
    if "chain" in table.data:
        chain = table.get("chain", _chain_text(role))
        numbers = {"lr": _number(table, "lr")}
        table.done(("chain", "lr"))
        return RoleSpace(role=role, chain=chain, numbers=numbers)
    families: dict[str, tuple[str, ...]] = {}
    for family, choices in FAMILIES.items():
        if family in table.data:
            families[family] = tuple(table.get(family, _choices(role, family, tuple(choices))))
    if not families:
        raise table.file.error(
            table.key, f"give 'chain', 'tie', or choices for at least one of {', '.join(FAMILIES)}"
        )
    numbers = {name: _number(table, name) for name in NUMBER_CHECKS if name == "lr" or name in table.data}
    for name in ("beta1", "beta2"):
        if name in numbers and not any(uses(f, c, name) for f, choices in families.items() for c in choices):
            offered = "; ".join(f"{f}: {', '.join(c)}" for f, c in families.items())
            raise table.error(name, f"no choice of this role uses {name} ({offered})")
    table.done(("tie", "chain", *FAMILIES, *NUMBER_CHECKS))
    return RoleSpace(role=role, families=families, numbers=numbers)


def _chain_text(role: str) -> Callable[[Any], str | None]:
    """Chain text that parses and can act on ``role``'s tensors."""

    def check(value: Any) -> str | None:
        problem = _string(value)
        if problem:
            return problem
        from optispace.chain import parse_chain

        try:
            chain = parse_chain(value)
        except ValueError as e:
            return f"not a valid chain: {e}"
        try:
            chain.check_shape(ROLE_SHAPES[role])
        except ValueError as e:
            return f"cannot act on the {role} role's {len(ROLE_SHAPES[role])}-D tensors ({e})"
        return None

    return check


def _choices(role: str, family: str, allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return f"must be a non-empty array of choices from {', '.join(allowed)}, not {value!r}"
        for choice in value:
            if choice not in allowed:
                return f"unknown choice {choice!r}; allowed: {', '.join(allowed)}"
            problem = incompatible_choice(role, family, choice)
            if problem:
                return problem
        if len(set(value)) != len(value):
            return f"has a repeated choice: {value!r}"
        return None

    return check


def _number(table: _Table, name: str) -> Number:
    """A fixed number, ``[low, high]`` (a range; log-uniform for lr) or ``{values = [...]}``."""
    check = NUMBER_CHECKS[name]
    value = table.get(name, lambda v: None)
    if isinstance(value, list):
        if len(value) != 2:
            raise table.error(name, f"a range is [low, high] (two numbers), not {value!r}")
        for bound in value:
            problem = check(bound)
            if problem:
                raise table.error(name, f"range bound {problem}")
        if not value[0] < value[1]:
            raise table.error(
                name, f"range {value!r} is reversed or empty; write [low, high] with low < high"
            )
        return Range(float(value[0]), float(value[1]), log=name == "lr")
    if isinstance(value, dict):
        values = value.get("values")
        if set(value) != {"values"} or not isinstance(values, list) or not values:
            raise table.error(name, f"a choice of numbers is written {{values = [a, b, ...]}}, not {value!r}")
        for v in values:
            problem = check(v)
            if problem:
                raise table.error(name, f"value {problem}")
        if len(set(values)) != len(values):
            raise table.error(name, f"has a repeated value: {values!r}")
        return Values(tuple(float(v) for v in values))
    problem = check(value)
    if problem:
        raise table.error(name, f"{problem} (or a range [low, high], or {{values = [...]}})")
    return float(value)


def _check_enumerable(file: _File, roles: dict[str, RoleSpace], recipes: dict[str, RecipeChoice]) -> None:
    numbers = {("roles", role, name): n for role, space in roles.items() for name, n in space.numbers.items()}
    numbers.update({("recipes", label, "lr"): choice.lr for label, choice in recipes.items()})
    for key, number in numbers.items():
        if isinstance(number, Range):
            raise file.error(
                key, 'sampler "grid" enumerates choices; give a number or {values = [...]}, not a range'
            )
