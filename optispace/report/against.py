"""The report's "Recipes against adamw" section as one frame, for a ``[recipes]`` study that names
adamw and sweeps no scale axis (a swept study gets the scaling section instead).

Per label (the trial's ``recipe`` parameter): its best finished trial by mean objective over seeds
(``scaling.best_of``: least, or greatest when the study maximizes), that trial's lr, objective,
sample sd over seeds and optimizer state bytes, whether that lr is at an end of the lrs the label
tried (``lr_edge``), and the paired difference to adamw's best trial
(``scaling.gaps``: per seed both finished, label minus adamw; mean, and standard error
``sd / sqrt(n)``), then the mean over seeds of each of the regime's other measurements of that
trial (a column per name: sft ``forgetting``, ...; none in pretraining). adamw first, then the
labels in order.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from optispace.report.frames import METRIC_PREFIX
from optispace.report.scaling import REFERENCE, best_of, gaps, scale_axes, with_groups, with_lr_edges

_GROUP = "group"


def compares(search: dict[str, Any]) -> bool:
    """Does the search file compare ``[recipes]`` that include adamw, with no scale axis swept?"""
    recipes = search.get("recipes")
    return isinstance(recipes, dict) and REFERENCE in recipes and not scale_axes(search)


def against_reference(
    trials: pl.DataFrame, structs: pl.DataFrame, search: dict[str, Any], maximize: bool = False
) -> pl.DataFrame:
    """One row per label (module doc); empty unless :func:`compares` and some trial finished."""
    if not compares(search):
        return pl.DataFrame()
    best = with_lr_edges(best_of(with_groups(trials, structs, search), [], maximize), search)
    if best.is_empty():
        return pl.DataFrame()
    names = {label: (entry.get("recipe", label) if isinstance(entry, dict) else label)
             for label, entry in search["recipes"].items()}
    return (
        best.join(gaps(best, at={}), on=_GROUP, how="left")
        .with_columns(
            recipe=pl.col(_GROUP).replace_strict(names, default=pl.col(_GROUP), return_dtype=pl.String),
            difference_se=pl.col("gap_sd") / pl.col("paired_seeds").cast(pl.Float64).sqrt(),
        )
        .sort(pl.col(_GROUP) != REFERENCE, _GROUP)
        .select(
            pl.col(_GROUP).alias("label"), "recipe", "best_lr", "lr_edge", "best_loss", "seed_sd",
            pl.col("gap").alias("difference"), "difference_se", "paired_seeds", "state_bytes", "n_trials",
            "best_trial",
            *[pl.col(c).list.drop_nulls().list.mean().alias(c.removeprefix(METRIC_PREFIX))
              for c in best.columns if c.startswith(METRIC_PREFIX)],
        )
    )
