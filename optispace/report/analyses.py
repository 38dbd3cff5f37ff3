"""What a study says, computed in polars from the frames of ``optispace.report.frames``.

A *structure* is the chain text of every role (the ``structure`` attribute), hyperparameters
excluded; its trials differ only in tuned hyperparameters (lr, betas, ...). Every frame returned
here is sorted, so the report written from it is the same byte for byte on every run.

- ``structures``: per structure the best loss over its trials, counts, seed spread, divergence rate
- ``sufficiency``: which structures come within a tolerance of the best one, judged on paired
  per-seed differences where the structures share seeds
- ``choice_map``: per role and primitive family, the share of sufficient structures using each choice,
  and its marginal effect: the least difference to the best of any structure using it
- ``importance``: Optuna's PED-ANOVA importance of each parameter, and summed per role
- ``pareto_front``: the trials no other trial beats on both val loss and optimizer state bytes
- ``lr_sensitivity``: per structure and role, the lr range whose loss stays within the tolerance
- ``best_curves``: the val loss curves of the best trial of the top structures
"""

from __future__ import annotations

import json
import math
import warnings

import optuna
import polars as pl
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from optispace.report.frames import PARAM_PREFIX, PROBE_PREFIX, probe_names
from optispace.trial import role_sort_key

# PED-ANOVA compares the top quantile of trials with the rest; below this many finished trials
# the top quantile holds too few trials for the comparison to mean anything.
MIN_TRIALS_FOR_IMPORTANCE = 10
# A best lr in the outer 5 % of its searched log range is flagged as at the edge.
EDGE_SHARE = 0.05
# The top quantile holds at least this many trials (the PED-ANOVA documentation asks for >= 5).
_MIN_TOP_TRIALS = 5


def chain_roles(trials: pl.DataFrame) -> list[str]:
    """The roles with a ``chain.<role>`` column, in the canonical role order."""
    roles = [c.split(".", 1)[1] for c in trials.columns if c.startswith("chain.")]
    return sorted(roles, key=role_sort_key)


def structures(trials: pl.DataFrame) -> pl.DataFrame:
    """One row per structure, best first: best loss and its trial, counts, seed spread, divergence.

    ``best_loss`` = min over the structure's finished, non-diverged trials of the mean val loss over
    seeds; ``seed_sd`` = sample standard deviation (ddof 1) of the best trial's per-seed losses;
    ``divergence_rate`` = diverged / (finished + diverged). ``rank`` orders by best loss (structures
    with no finished trial last, by text) and ``label`` is ``S<rank>``. When trials recorded probes,
    ``probe.<name>`` = mean of that probe's finite values over the structure's finished trials.
    """
    roles = chain_roles(trials)
    probes = [PROBE_PREFIX + name for name in probe_names(trials.columns)]
    finished = pl.col("val_loss").is_not_null()
    named = trials.filter(pl.col("structure").is_not_null()).sort("number")
    counts = named.group_by("structure").agg(
        n_trials=pl.len(),
        n_finished=finished.sum(),
        n_diverged=pl.col("diverged").sum(),
        n_pruned=(pl.col("state") == "PRUNED").sum(),
        n_failed=(pl.col("state") == "FAIL").sum(),
        n_running=pl.col("state").is_in(["RUNNING", "WAITING"]).sum(),
        state_bytes=pl.col("state_bytes").drop_nulls().first(),
        **{f"chain.{r}": pl.col(f"chain.{r}").drop_nulls().first() for r in roles},
        **{p: pl.col(p).filter(finished & pl.col(p).is_finite()).mean() for p in probes},
    )
    best = (
        named.filter(pl.col("val_loss").is_not_null())
        .sort("val_loss", "number")
        .unique(subset="structure", keep="first", maintain_order=True)
        .select(
            "structure",
            best_loss="val_loss",
            best_trial="number",
            seeds="seeds",
            seed_losses="seed_losses",
            **{f"lr.{r}": f"lr.{r}" for r in roles if f"lr.{r}" in named.columns},
        )
    )
    frame = counts.join(best, on="structure", how="left").with_columns(
        divergence_rate=pl.col("n_diverged") / (pl.col("n_finished") + pl.col("n_diverged")),
        n_seeds=pl.col("seeds").list.len().cast(pl.Int64),
        seed_sd=pl.col("seed_losses").list.drop_nulls().list.std(ddof=1),
    )
    frame = frame.sort("best_loss", "structure", nulls_last=True).with_row_index("rank", offset=1)
    return frame.with_columns(rank=pl.col("rank").cast(pl.Int64), label=pl.format("S{}", pl.col("rank")))


def sufficiency(structs: pl.DataFrame, tolerance: float) -> pl.DataFrame:
    """``structs`` with the difference to the best structure and whether it suffices.

    ``difference`` = mean over the seeds both best trials ran (and finished) of
    loss(structure, seed) - loss(best, seed); with no shared seed it is best_loss - best_loss(S1).
    ``difference_se`` = sd(paired differences) / sqrt(n) when paired, else
    sqrt(sd_a^2 / n_a + sd_b^2 / n_b) (Welch's standard error). A structure *suffices* when
    ``difference <= tolerance``; ``borderline`` when that verdict is within 2 standard errors.
    """
    if structs.filter(pl.col("best_loss").is_not_null()).is_empty():
        return structs.with_columns(
            difference=pl.lit(None, pl.Float64),
            difference_se=pl.lit(None, pl.Float64),
            paired_seeds=pl.lit(0, pl.Int64),
            sufficient=pl.lit(False),
            borderline=pl.lit(False),
        )
    ref = structs.row(0, named=True)
    per_seed = _per_seed_losses(structs)
    ref_seed = per_seed.filter(pl.col("structure") == ref["structure"]).select("seed", ref_loss="loss")
    paired = (
        per_seed.join(ref_seed, on="seed")
        .with_columns(d=pl.col("loss") - pl.col("ref_loss"))
        .group_by("structure")
        .agg(
            paired_seeds=pl.len().cast(pl.Int64),
            paired_mean=pl.col("d").mean(),
            paired_se=pl.col("d").std(ddof=1) / pl.len().sqrt(),
        )
    )
    welch = (
        pl.col("seed_sd").pow(2) / pl.col("n_seeds") + ref["seed_sd"] ** 2 / ref["n_seeds"]
        if ref["seed_sd"] is not None
        else pl.lit(None, pl.Float64)
    )
    frame = structs.join(paired, on="structure", how="left").with_columns(
        difference=pl.coalesce("paired_mean", pl.col("best_loss") - ref["best_loss"]),
        difference_se=pl.when(pl.col("paired_seeds") >= 2).then("paired_se").otherwise(welch.sqrt()),
        paired_seeds=pl.col("paired_seeds").fill_null(0),
    )
    return (
        frame.with_columns(
            sufficient=(pl.col("difference") <= tolerance).fill_null(False),
            borderline=((pl.col("difference") - tolerance).abs() <= 2 * pl.col("difference_se")).fill_null(
                False
            ),
        )
        .drop("paired_mean", "paired_se")
        .sort("rank")
    )


def _per_seed_losses(structs: pl.DataFrame) -> pl.DataFrame:
    """(structure, seed, loss) for each seed of each structure's best trial that finished."""
    return (
        structs.filter(
            pl.col("best_loss").is_not_null()
            & (pl.col("seeds").list.len() == pl.col("seed_losses").list.len())
        )
        .select("structure", seed="seeds", loss="seed_losses")
        .explode("seed", "loss")
        .filter(pl.col("loss").is_not_null() & pl.col("loss").is_finite())
    )


def choice_map(suff: pl.DataFrame, trials: pl.DataFrame, params: pl.DataFrame) -> pl.DataFrame:
    """Per role, family and choice: the share of sufficient structures (and of all) using it, and
    the marginal effect of the choice.

    A structure's choices are the categorical parameters of its best trial. ``share`` =
    (sufficient structures using the choice) / (sufficient structures); a family a structure did
    not sample (a conditional one) counts in the denominator only. The marginal effect is the cost
    of committing the role to the choice: ``gap`` = min over structures using it of their
    difference to S1 (paired, ``sufficiency``), ``gap_se`` its standard error and ``best_using``
    that structure's label (null when no finished structure used it). Every choice the
    distribution offers is listed, used or not, in the distribution's order.
    """
    categorical = params.filter(pl.col("kind") == "categorical").sort("name")
    finished = suff.filter(pl.col("best_loss").is_not_null()).select(
        "sufficient", "rank", "label", "difference", "difference_se", number="best_trial"
    )
    chosen = finished.join(trials, on="number", how="left")
    n_sufficient = int(finished["sufficient"].sum())
    rows = []
    for p in categorical.iter_rows(named=True):
        column = chosen[PARAM_PREFIX + p["name"]]
        for order, choice in enumerate(json.loads(p["choices"])):
            uses = column == choice
            used_sufficient = int((uses & chosen["sufficient"]).sum())
            used_all = int(uses.sum())
            best = chosen.filter(uses).sort("difference", "rank", nulls_last=True).head(1).to_dicts()
            rows.append(
                {
                    "role": p["role"],
                    "family": p["family"],
                    "choice": choice,
                    "order": order,
                    "sufficient_using": used_sufficient,
                    "share": used_sufficient / n_sufficient if n_sufficient else None,
                    "explored_using": used_all,
                    "explored_share": used_all / len(finished) if len(finished) else None,
                    "best_using": best[0]["label"] if best else None,
                    "gap": best[0]["difference"] if best else None,
                    "gap_se": best[0]["difference_se"] if best else None,
                }
            )
    schema = {
        "role": pl.String,
        "family": pl.String,
        "choice": pl.String,
        "order": pl.Int64,
        "sufficient_using": pl.Int64,
        "share": pl.Float64,
        "explored_using": pl.Int64,
        "explored_share": pl.Float64,
        "best_using": pl.String,
        "gap": pl.Float64,
        "gap_se": pl.Float64,
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.sort(_role_rank(frame), "family", "order").drop("order")


def importance(study: optuna.Study, params: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """PED-ANOVA importance of each parameter for a low val loss, normalized to sum 1.

    Conditional PED-ANOVA (Optuna's default evaluator) scores conditional parameters within the
    trials that sampled them. The target is ``values[0]`` (val loss; a diverged trial keeps its
    penalty, so the region where trials diverge counts as bad). Returns the frame (param, role,
    family, importance; sorted by importance, then name) and a reason when none was computed.
    """
    schema = {"param": pl.String, "role": pl.String, "family": pl.String, "importance": pl.Float64}
    empty = pl.DataFrame(schema=schema)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = sum(1 for t in trials if t.values and math.isfinite(t.values[0]))
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return empty, f"too few finished trials ({n}; importance needs {MIN_TRIALS_FOR_IMPORTANCE})"
    names = sorted(params["name"])
    if not names:
        return empty, "the study sampled no parameters"
    quantile = min(0.5, max(0.1, _MIN_TOP_TRIALS / n))
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings():
        # Optuna warns that the target is minimized (it is) and about sparse conditional regimes.
        warnings.simplefilter("ignore")
        raw = evaluator.evaluate(study, params=names, target=lambda t: t.values[0])
    total = sum(raw.values())
    if total <= 0:
        return empty, "no parameter separates the best trials from the rest"
    frame = params.select(param="name", role="role", family="family").with_columns(
        importance=pl.col("param").replace_strict(raw, return_dtype=pl.Float64) / total
    )
    return frame.sort(pl.col("importance"), "param", descending=[True, False]), None


def importance_by_role(imp: pl.DataFrame) -> pl.DataFrame:
    """Summed importance per role, in the canonical role order."""
    frame = imp.group_by("role").agg(importance=pl.col("importance").sum())
    return frame.sort(_role_rank(frame))


def pareto_front(trials: pl.DataFrame, maximize: bool = False) -> pl.DataFrame:
    """Finished trials that no other finished trial dominates on (val_loss, state_bytes); the
    objective ``val_loss`` is minimized, or maximized when ``maximize`` (a reward).

    Trial a dominates b when a is no worse on both and better on one. A trial is on the front iff
    its objective is the best at its state bytes and better than the best at every smaller state
    bytes. Sorted by state bytes, then objective (best first), then trial number.
    """
    points = trials.filter(pl.col("val_loss").is_not_null() & pl.col("state_bytes").is_not_null())
    cost = (-pl.col("val_loss") if maximize else pl.col("val_loss")).alias("cost")  # least is best
    least = (
        points.group_by("state_bytes")
        .agg(least=cost.min())
        .sort("state_bytes")
        .with_columns(below=pl.col("least").cum_min().shift(1))
    )
    return (
        points.join(least, on="state_bytes")
        .filter((cost == pl.col("least")) & (pl.col("below").is_null() | (cost < pl.col("below"))))
        .select("number", "structure", "val_loss", "state_bytes")
        .sort("state_bytes", "val_loss", "number", descending=[False, maximize, False])
    )


def lr_groups(trials: pl.DataFrame) -> dict[str, list[str]]:
    """Roles with an lr recorded, grouped when their columns are equal (tied roles, a shared
    lr): first role of each group -> the group, in the canonical role order."""
    groups: dict[str, list[str]] = {}
    for role in chain_roles(trials):
        column = trials.get_column(f"lr.{role}", default=None)
        if column is None or column.null_count() == len(column):
            continue
        same = next((first for first in groups if trials[f"lr.{first}"].equals(column)), None)
        groups.setdefault(same or role, []).append(role)
    return groups


def lr_ranges(search: dict | None) -> dict[str, tuple[float, float]]:
    """role -> the (low, high) lr range its search file sampled; tied roles take their target's."""
    roles = (search or {}).get("roles", {})
    ranges = {}
    for role, table in roles.items():
        lr = roles.get(table.get("tie"), table).get("lr") if isinstance(table, dict) else None
        if isinstance(lr, list) and len(lr) == 2:
            ranges[role] = (float(lr[0]), float(lr[1]))
    return ranges


def lr_edge(best: float | None, low: float, high: float, share: float = EDGE_SHARE) -> str | None:
    """``"low"``/``"high"`` when ``best`` lies in the outer ``share`` of the log range [low, high]:
    the optimum may lie beyond what the search tried, so the range should grow past that edge."""
    if best is None or not (0 < low < high):
        return None
    span = math.log(high / low)
    if math.log(best / low) < share * span:
        return "low"
    if math.log(high / best) < share * span:
        return "high"
    return None


def lr_sensitivity(
    trials: pl.DataFrame, structs: pl.DataFrame, tolerance: float,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> pl.DataFrame:
    """Per structure and lr group with a varied lr: the basin of lrs within ``tolerance`` of its best.

    One row per group of ``lr_groups`` (``role``: its first role, ``roles``: all of them).
    ``basin_lo``/``basin_hi`` = the least and greatest lr among the structure's finished trials with
    loss <= best_loss + tolerance; ``basin_decades`` = log10(basin_hi / basin_lo), a lower bound on
    the basin's width (the sampled lrs bound it). ``diverged_lo`` = the least lr at which a trial
    of the structure diverged. ``best_lr`` = the lr of its best trial; ``edge`` = :func:`lr_edge` of
    it within the role's searched range from ``ranges`` (null where the range is unknown).
    """
    rows = []
    labels = structs.select("structure", "label", "rank", "best_loss")
    ranges = ranges or {}
    for role, group in lr_groups(trials).items():
        lr = f"lr.{role}"
        low, high = ranges.get(role, (0.0, 0.0))
        points = trials.filter(pl.col(lr).is_not_null() & pl.col("structure").is_not_null())
        varied = points.group_by("structure").agg(n_lrs=pl.col(lr).n_unique()).filter(pl.col("n_lrs") > 1)
        points = points.join(varied, on="structure").join(labels, on="structure")
        rows.append(
            points.group_by("structure", "label", "rank")
            .agg(
                n_trials=pl.col("val_loss").is_not_null().sum(),
                basin_lo=pl.col(lr).filter(pl.col("val_loss") <= pl.col("best_loss") + tolerance).min(),
                basin_hi=pl.col(lr).filter(pl.col("val_loss") <= pl.col("best_loss") + tolerance).max(),
                diverged_lo=pl.col(lr).filter(pl.col("diverged")).min(),
                best_lr=pl.col(lr).filter(pl.col("val_loss") == pl.col("val_loss").min()).min(),
            )
            .with_columns(
                role=pl.lit(role),
                roles=pl.lit(", ".join(group)),
                basin_decades=(pl.col("basin_hi") / pl.col("basin_lo")).log10(),
                edge=pl.col("best_lr").map_elements(
                    lambda best, lo=low, hi=high: lr_edge(best, lo, hi), return_dtype=pl.String
                ),
            )
        )
    if not rows:
        return pl.DataFrame(
            schema={
                "label": pl.String,
                "role": pl.String,
                "roles": pl.String,
                "n_trials": pl.UInt32,
                "basin_lo": pl.Float64,
                "basin_hi": pl.Float64,
                "basin_decades": pl.Float64,
                "diverged_lo": pl.Float64,
                "best_lr": pl.Float64,
                "edge": pl.String,
                "structure": pl.String,
                "rank": pl.Int64,
            }
        )
    frame = pl.concat(rows)
    return frame.sort("rank", _role_rank(frame)).select(
        "label",
        "role",
        "roles",
        "n_trials",
        "basin_lo",
        "basin_hi",
        "basin_decades",
        "diverged_lo",
        "best_lr",
        "edge",
        "structure",
        "rank",
    )


def _role_rank(frame: pl.DataFrame) -> pl.Expr:
    """A sort key putting ``frame``'s ``role`` column in the canonical role order."""
    order = {r: i for i, r in enumerate(sorted(set(frame["role"]), key=role_sort_key))}
    return pl.col("role").replace_strict(order, return_dtype=pl.Int64)


def best_curves(curves: pl.DataFrame, structs: pl.DataFrame, top: int) -> pl.DataFrame:
    """The intermediate values of the best trial of each of the ``top`` best structures."""
    best = structs.filter(pl.col("best_trial").is_not_null()).head(top)
    return (
        curves.join(best.select("label", "rank", number="best_trial"), on="number")
        .sort("rank", "step")
        .select("label", "number", "step", "tokens", "val_loss")
    )
