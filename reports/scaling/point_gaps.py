"""Paired gap of each recipe to adamw at every point of a two-axis scale grid, from a report's trials.

    .venv/bin/python reports/scaling/point_gaps.py reports/scaling/width_batch_wide/trials.parquet

The report's scaling section takes, per value of one axis, the best trial over the other axes; this
takes the best trial (least mean val loss over seeds) per recipe at each (dim, batch_size) point, and
its per-seed losses minus adamw's best at the same point: mean, and standard error sd / sqrt(n).
"""

from __future__ import annotations

import sys

import polars as pl

AXES = ["scale.dim", "scale.batch_size"]


def point_gaps(trials: pl.DataFrame) -> pl.DataFrame:
    """One row per recipe other than adamw and grid point: both best lrs, the gap and its se."""
    done = trials.filter(pl.col("val_loss").is_not_null()).sort("val_loss", "number")
    best = done.group_by("param.recipe", *AXES, maintain_order=True).first()
    best = best.select("param.recipe", *AXES, lr="lr.matrix", losses="seed_losses")
    adamw = best.filter(pl.col("param.recipe") == "adamw").select(*AXES, adamw_lr="lr", adamw="losses")
    diffs = pl.col("losses") - pl.col("adamw")
    return (
        best.filter(pl.col("param.recipe") != "adamw")
        .join(adamw, on=AXES)
        .with_columns(d=diffs)
        .select(
            pl.col("param.recipe").alias("recipe"), *AXES, "lr", "adamw_lr",
            gap=pl.col("d").list.mean(), se=pl.col("d").list.std(ddof=1) / pl.col("d").list.len().sqrt(),
        )
        .sort("recipe", "scale.batch_size", "scale.dim")
    )


if __name__ == "__main__":
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, float_precision=3):
        print(point_gaps(pl.read_parquet(sys.argv[1])))
