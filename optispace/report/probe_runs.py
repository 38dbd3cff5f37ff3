"""What the probes recorded on runs of recipes x seeds (``optispace probe``), as polars frames.

A run here is ``{"recipe", "seed", "final_val_loss", "tokens_per_s", "probes"}`` with ``probes`` the
run record's ``record.probes`` (JSON-ready dicts; see ``ray``, ``geometry``, ``outliers``). Frames are
sorted, so a report written from them is deterministic. Aggregates over seeds give the mean and the
range (min, max), since three seeds make a poor standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from optispace.probes.outliers import POPULATIONS
from optispace.probes.ray import STATISTICS

_KEYS = ("recipe", "seed")


def runs_frame(runs: Sequence[dict]) -> pl.DataFrame:
    """One row per run: recipe, seed, final val loss, divergence, throughput, each probe's value."""
    names = sorted({name for run in runs for name in run["probes"]})
    rows = [
        {
            **{k: run[k] for k in _KEYS},
            "final_val_loss": run["final_val_loss"],
            "diverged": run["diverged"],
            "tokens_per_s": run["tokens_per_s"],
            **{f"{name}.value": run["probes"].get(name, {}).get("value") for name in names},
        }
        for run in runs
    ]
    schema = {
        "recipe": pl.String,
        "seed": pl.Int64,
        "final_val_loss": pl.Float64,
        "diverged": pl.String,
        "tokens_per_s": pl.Float64,
    } | {f"{name}.value": pl.Float64 for name in names}
    return pl.DataFrame(rows, schema=schema).sort(_KEYS)


def ray_frame(runs: Sequence[dict]) -> pl.DataFrame:
    """One row per run, table and frequency bucket (``all`` included): each statistic, its null, margin."""
    columns = [c for s in STATISTICS for c in (s, f"{s}_null", f"{s}_margin")] + ["beats_null"]
    schema = {
        "recipe": pl.String,
        "seed": pl.Int64,
        "table": pl.String,
        "bucket": pl.String,
        "tokens": pl.Int64,
    }
    schema |= dict.fromkeys(columns, pl.Float64)
    rows = [
        {**{k: run[k] for k in _KEYS}, "table": table, **bucket}
        for run in runs
        for table, found in run["probes"].get("ray", {}).get("tables", {}).items()
        for bucket in found["buckets"]
    ]
    return pl.DataFrame(rows, schema=schema).with_columns(_bucket_rank()).sort([*_KEYS, "table", "rank"])


def _bucket_rank() -> pl.Expr:
    """``all`` first, then the decades from rare to frequent."""
    lower = pl.col("bucket").str.split("-").list.first()
    return pl.when(pl.col("bucket") == "all").then(-1).otherwise(lower.cast(pl.Int64)).alias("rank")


def geometry_frame(runs: Sequence[dict]) -> pl.DataFrame:
    """One row per run, sampled step and role: autocorrelation, non-zero rows, factored error, row spread."""
    measures = ("autocorrelation", "nonzero_rows", "factored_error", "row_spread")
    schema = {"recipe": pl.String, "seed": pl.Int64, "step": pl.Int64, "role": pl.String}
    schema |= dict.fromkeys(measures, pl.Float64)
    rows = [
        {**{k: run[k] for k in _KEYS}, **{c: r.get(c) for c in ("step", "role", *measures)}}
        for run in runs
        for r in run["probes"].get("geometry", {}).get("series", [])
    ]
    return pl.DataFrame(rows, schema=schema).sort([*_KEYS, "role", "step"])


def outlier_frame(runs: Sequence[dict]) -> pl.DataFrame:
    """One row per run, sampled step, table and population: max and p99 ratio, the argmax row's history."""
    fields = {
        "max": pl.Float64,
        "p99": pl.Float64,
        "median": pl.Float64,
        "row": pl.Int64,
        "seen": pl.Int64,
        "first_seen": pl.Int64,
        "previously_seen": pl.Int64,
    }
    schema = {
        "recipe": pl.String,
        "seed": pl.Int64,
        "step": pl.Int64,
        "table": pl.String,
        "population": pl.String,
    }
    rows = [
        {**{k: run[k] for k in _KEYS}, "step": r["step"], "table": r["role"], "population": p, **r[p]}
        for run in runs
        for r in run["probes"].get("outliers", {}).get("series", [])
        for p in POPULATIONS
        if r.get(p) is not None
    ]
    return pl.DataFrame(rows, schema=schema | fields).sort([*_KEYS, "table", "population", "step"])


def ray_summary(ray: pl.DataFrame) -> pl.DataFrame:
    """Per recipe, table and bucket: ray fit, its null and the margin (mean and range over seeds)."""
    return (
        ray.group_by("recipe", "table", "bucket", "rank")
        .agg(
            pl.len().alias("seeds"),
            pl.col("tokens").mean().alias("tokens"),
            *_mean_range("ray_fit_margin"),
            *(pl.col(c).mean() for c in ("ray_fit", "ray_fit_null", "cos_successive", "cos_successive_null")),
            pl.col("beats_null").mean(),
        )
        .sort("table", "rank", "recipe")
        .drop("rank")
    )


def geometry_summary(runs: Sequence[dict]) -> pl.DataFrame:
    """Per recipe and role: each run's means over its sampled steps, averaged over seeds (with the range)."""
    measures = ("autocorrelation", "nonzero_rows", "factored_error", "row_spread")
    rows = [
        {"recipe": run["recipe"], "seed": run["seed"], "role": role, **{m: values.get(m) for m in measures}}
        for run in runs
        for role, values in run["probes"].get("geometry", {}).get("summary", {}).items()
    ]
    schema = {"recipe": pl.String, "seed": pl.Int64, "role": pl.String} | dict.fromkeys(measures, pl.Float64)
    return (
        pl.DataFrame(rows, schema=schema)
        .group_by("recipe", "role")
        .agg(*_mean_range("autocorrelation"), pl.col("nonzero_rows", "factored_error", "row_spread").mean())
        .with_columns(_role_rank())
        .sort("rank", "recipe")
        .drop("rank")
    )


def outlier_summary(runs: Sequence[dict]) -> pl.DataFrame:
    """Per recipe, table, population and phase (first and second half of the sampled steps).

    ``max``: median over seeds of each run's largest ratio in that phase (with the range over seeds);
    ``p99``: median over seeds of each run's median per-step 99th percentile.
    """
    rows = [
        {
            "recipe": run["recipe"],
            "seed": run["seed"],
            "table": table,
            "population": population,
            "phase": phase,
            "max": found.get(f"{phase}_max"),
            "p99": found.get(f"{phase}_p99"),
        }
        for run in runs
        for table, per_population in run["probes"].get("outliers", {}).get("summary", {}).items()
        for population, found in per_population.items()
        for phase in ("early", "late")
        if f"{phase}_max" in found
    ]
    schema = {"recipe": pl.String, "seed": pl.Int64, "table": pl.String, "population": pl.String}
    schema |= {"phase": pl.String, "max": pl.Float64, "p99": pl.Float64}
    return (
        pl.DataFrame(rows, schema=schema)
        .group_by("recipe", "table", "population", "phase")
        .agg(
            pl.col("max").median().alias("max"),
            pl.col("max").min().alias("max_min"),
            pl.col("max").max().alias("max_max"),
            pl.col("p99").median(),
        )
        .sort("table", "population", "phase", "recipe")
    )


def outlier_rows(outliers: pl.DataFrame, rare: int = 10) -> pl.DataFrame:
    """Which rows are the largest outliers: per recipe, table and population, over all sampled steps.

    The median count of the argmax row's token so far, the share of argmax rows whose token had been
    seen at most ``rare`` times, and the median number of steps since it was previously seen.
    """
    since = pl.when(pl.col("previously_seen") >= 0).then(pl.col("step") - pl.col("previously_seen"))
    return (
        outliers.group_by("recipe", "table", "population")
        .agg(
            pl.col("seen").median().alias("seen"),
            (pl.col("seen") <= rare).mean().alias(f"share_seen_le_{rare}"),
            since.median().alias("steps_since_seen"),
        )
        .sort("table", "population", "recipe")
    )


def _mean_range(column: str) -> list[pl.Expr]:
    return [
        pl.col(column).mean().alias(column),
        pl.col(column).min().alias(f"{column}_min"),
        pl.col(column).max().alias(f"{column}_max"),
    ]


def _role_rank() -> pl.Expr:
    order = {"embed": 0, "head": 1, "matrix": 2, "vector": 3}
    return pl.col("role").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("rank")
