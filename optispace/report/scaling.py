"""The report's scaling section as frames, for a study that swept scale axes (``optispace.search.scale``).

A *group* is what the section compares: a recipe (a study of ``[recipes]``) or a structure (its
label ``S<rank>``). Per group, scale axis and value of that axis:

- :func:`best_at`: the best finished trial (least mean val loss over seeds; over every value of
  the other axes), its loss, the sample sd of its per-seed losses, its lr (the matrix role's: the
  one a muP rule scales) and the number of finished trials;
- :func:`fits`: the power law ``loss = a * x^b`` fitted to the best losses by least squares in
  log-log space, its exponent ``b``, and ``r2``, the share of the variance of log loss it explains;
- :func:`gaps`: each group's paired gap to the reference recipe (adamw) at the same value: per
  seed, group loss minus reference loss of the two best trials, then mean and sample sd over seeds;
- :func:`point_gaps`: with two or more axes swept, the same gap at each point of the grid (the best
  trial per group and point, not over the other axes), with both best lrs and se = sd / sqrt(n).

Every frame is sorted, so the same study gives the same tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs

from optispace.report.analyses import lr_edge
from optispace.report.frames import METRIC_PREFIX
from optispace.trial import SCALE_AXES

REFERENCE = "adamw"
_GROUP = "group"


def scale_axes(search: dict[str, Any]) -> list[str]:
    """The axes the search file swept (given as lists in ``[proxy]``), in the search's axis order."""
    proxy = search.get("proxy")
    if not isinstance(proxy, dict):  # not a search file's table (a hand-made study)
        return []
    return [axis for axis in SCALE_AXES if isinstance(proxy.get(axis), list)]


def with_groups(trials: pl.DataFrame, structs: pl.DataFrame, search: dict[str, Any]) -> pl.DataFrame:
    """``trials`` with a ``group`` column: the recipe trained, else the structure's label."""
    recipes = list(search.get("recipes", {}))
    if "param.recipe" in trials.columns:
        return trials.with_columns(pl.col("param.recipe").alias(_GROUP))
    if len(recipes) == 1:
        return trials.with_columns(pl.lit(recipes[0]).alias(_GROUP))
    labels = structs.select("structure", pl.col("label").alias(_GROUP))
    return trials.join(labels, on="structure", how="left")


def recipe_lr_ranges(search: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``[recipes]`` label -> the (least, greatest) lr its entry let the search try (a range or values)."""
    ranges = {}
    for label, entry in (search.get("recipes") or {}).items():
        lr = entry.get("lr") if isinstance(entry, dict) else None
        tried = lr.get("values") if isinstance(lr, dict) else lr
        if isinstance(tried, list) and len(tried) >= 2:
            ranges[label] = (float(min(tried)), float(max(tried)))
    return ranges


def with_lr_edges(best: pl.DataFrame, search: dict[str, Any]) -> pl.DataFrame:
    """``best`` with ``lr_edge``: "low" or "high" where a recipe's best lr is at an end of what it tried
    (``analyses.lr_edge``), so its optimum may lie beyond; null inside, and for structures."""
    if best.is_empty():
        return best
    ranges = recipe_lr_ranges(search)
    edges = [lr_edge(lr, *ranges[g]) if g in ranges and lr is not None else None
             for g, lr in best.select(_GROUP, "best_lr").iter_rows()]
    return best.with_columns(pl.Series("lr_edge", edges, dtype=pl.String))


def best_at(trials: pl.DataFrame, axes: list[str]) -> pl.DataFrame:
    """Per group, axis and value: the best finished trial, its loss, seed sd and lr (module doc)."""
    parts = []
    for axis in axes:
        column = f"scale.{axis}"
        best = best_of(trials, [column])
        if not best.is_empty():
            parts.append(best.select(_GROUP, pl.lit(axis).alias("axis"), pl.col(column).alias("value"),
                                     pl.exclude(_GROUP, column)))
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts).sort(_GROUP, "axis", "value")


def best_of(trials: pl.DataFrame, by: list[str], maximize: bool = False) -> pl.DataFrame:
    """Per group and value of the ``by`` columns: the best finished trial (least mean objective over
    seeds, greatest when ``maximize``; ties to the lower trial number), its objective, the sample
    sd of its per-seed values, its lr (the matrix role's), state bytes, the number of trials, and its
    per-seed regime measurements (``metric.<name>``) when the trials have them."""
    lr = "lr.matrix" if "lr.matrix" in trials.columns else None
    done = trials.filter(pl.col("val_loss").is_not_null(), *[pl.col(c).is_not_null() for c in by])
    if done.is_empty():
        return pl.DataFrame()
    ranked = done.sort("val_loss", "number", descending=[maximize, False]).with_columns(
        n_trials=pl.len().over(_GROUP, *by).cast(pl.Int64)
    )
    best = ranked.unique(subset=[_GROUP, *by], keep="first", maintain_order=True)
    return best.select(
        _GROUP,
        *by,
        pl.col("val_loss").alias("best_loss"),
        pl.col("seed_losses").list.drop_nulls().list.std(ddof=1).alias("seed_sd"),
        (pl.col(lr) if lr else pl.lit(None, pl.Float64)).alias("best_lr"),
        "n_trials",
        pl.col("number").alias("best_trial"),
        "state_bytes",
        "seeds",
        "seed_losses",
        cs.starts_with(METRIC_PREFIX),
    ).sort(_GROUP, *by)


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float | None]:
    """``(a, b, r2)`` of ``y = a * x^b`` by least squares on ``log y = log a + b log x``.

    ``r2 = 1 - SS_res / SS_tot`` of log y; None when log y does not vary (nothing to explain).
    """
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    b, log_a = np.polyfit(lx, ly, 1)
    residual = float(np.sum((ly - (log_a + b * lx)) ** 2))
    total = float(np.sum((ly - ly.mean()) ** 2))
    return math.exp(log_a), float(b), (1.0 - residual / total) if total > 0 else None


def fits(best: pl.DataFrame) -> pl.DataFrame:
    """Per group and axis with 2 or more positive points: the power law of best loss vs the axis."""
    rows = []
    if not best.is_empty():
        for (group, axis), part in best.group_by(_GROUP, "axis", maintain_order=True):
            part = part.filter((pl.col("value") > 0) & (pl.col("best_loss") > 0))
            if part.height < 2:
                continue
            a, b, r2 = power_law(part["value"].to_numpy(), part["best_loss"].to_numpy())
            rows.append((group, axis, b, a, r2, part.height))
    schema = {_GROUP: pl.String, "axis": pl.String, "exponent": pl.Float64, "coefficient": pl.Float64,
              "r2": pl.Float64, "points": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(_GROUP, "axis")


#: The columns :func:`best_at` places a best trial by, and their types.
_AT = {"axis": pl.String, "value": pl.Float64}


def gaps(best: pl.DataFrame, reference: str = REFERENCE, at: dict[str, pl.DataType] = _AT) -> pl.DataFrame:
    """Per group other than ``reference`` and value of the ``at`` columns (axis and value by default):
    the paired per-seed gap to ``reference``'s best trial at the same values."""
    schema = {_GROUP: pl.String, **at, "gap": pl.Float64, "gap_sd": pl.Float64, "paired_seeds": pl.Int64}
    if best.is_empty() or reference not in best[_GROUP].to_list():
        return pl.DataFrame(schema=schema)
    ref = {tuple(r[c] for c in at): r for r in best.filter(pl.col(_GROUP) == reference).iter_rows(named=True)}
    rows = []
    for r in best.filter(pl.col(_GROUP) != reference).iter_rows(named=True):
        other = ref.get(tuple(r[c] for c in at))
        if other is None:
            continue
        diffs = _paired(r["seeds"], r["seed_losses"], other["seeds"], other["seed_losses"])
        if diffs:
            sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
            rows.append((r[_GROUP], *(r[c] for c in at), math.fsum(diffs) / len(diffs), sd, len(diffs)))
    return pl.DataFrame(rows, schema=schema, orient="row").sort(_GROUP, *at)


def point_gaps(trials: pl.DataFrame, axes: list[str]) -> pl.DataFrame:
    """Per group other than the reference and grid point (every swept axis at once): both groups'
    best lrs there, and the paired gap (``gaps``) with its standard error ``gap_sd / sqrt(n)``."""
    if len(axes) < 2:
        return pl.DataFrame()
    columns = [f"scale.{axis}" for axis in axes]
    best = best_of(trials, columns)
    found = gaps(best, at={c: pl.Float64 for c in columns})
    if found.is_empty():
        return found
    lrs = best.select(_GROUP, *columns, "best_lr")
    reference = lrs.filter(pl.col(_GROUP) == REFERENCE).select(*columns, reference_lr="best_lr")
    return (
        found.join(lrs, on=[_GROUP, *columns], how="left")
        .join(reference, on=columns, how="left")
        .with_columns(gap_se=pl.col("gap_sd") / pl.col("paired_seeds").sqrt())
        .select(_GROUP, *columns, "best_lr", "reference_lr", "gap", "gap_sd", "gap_se", "paired_seeds")
        .sort(_GROUP, *reversed(columns))
    )


def _paired(seeds: list, losses: list, ref_seeds: list, ref_losses: list) -> list[float]:
    """Per seed both trials finished: loss minus the reference's loss, in seed order."""
    ref = dict(zip(ref_seeds or [], ref_losses or [], strict=True))
    return [
        loss - ref[seed]
        for seed, loss in sorted(zip(seeds or [], losses or [], strict=True))
        if loss is not None and ref.get(seed) is not None
    ]
