"""How numbers and columns show in a study's report: number formats, column headers, tables."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from optispace.report.figures import format_bytes
from optispace.report.tables import code, markdown_table


def fmt_loss(x: float) -> str:
    return f"{x:.4f}"


def fmt_signed(x: float) -> str:
    return f"{x:+.4f}"


def fmt_share(x: float) -> str:
    return f"{x:.0%}"


def fmt_lr(x: float) -> str:
    return f"{x:.3g}"


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def fmt_bytes(x: int) -> str:
    return format_bytes(x)


# How each column shows in every table of the report: its header, and its cell format.
HEADERS = {
    "best_loss": "best loss",
    "best_trial": "trial",
    "number": "trial",
    "difference": "Δ vs S1",
    "difference_se": "± se",
    "sufficient": "suffices",
    "n_finished": "finished",
    "n_diverged": "diverged",
    "n_pruned": "pruned",
    "n_failed": "failed",
    "n_seeds": "seeds",
    "seed_sd": "seed sd",
    "paired_seeds": "paired seeds",
    "state_bytes": "state",
    "val_loss": "val loss",
    "sufficient_using": "sufficient using",
    "share": "share of sufficient",
    "explored_using": "finished using",
    "explored_share": "share of finished",
    "best_using": "best structure using it",
    "gap": "its Δ vs S1",
    "gap_se": "± se",
    "n_trials": "finished trials",
    "basin_lo": "basin from lr",
    "basin_hi": "to lr",
    "basin_decades": "width (decades)",
    "diverged_lo": "least lr that diverged",
    "best_lr": "best lr",
    "edge": "best lr at the range's edge",
    "last_step": "last step",
    "last_loss": "last val loss",
    "failure_step": "failure step",
    "label": "structure",
    "roles": "role(s)",
    "group": "recipe or structure",
    "r2": "r²",
}
FORMATS: dict[str, Callable] = {
    "best_loss": fmt_loss,
    "val_loss": fmt_loss,
    "last_loss": fmt_loss,
    "difference": fmt_signed,
    "difference_se": fmt_loss,
    "seed_sd": fmt_loss,
    "state_bytes": fmt_bytes,
    "share": fmt_share,
    "explored_share": fmt_share,
    "gap": fmt_signed,
    "gap_se": fmt_loss,
    "importance": fmt_share,
    "choice": code,
    "basin_lo": fmt_lr,
    "basin_hi": fmt_lr,
    "diverged_lo": fmt_lr,
    "best_lr": fmt_lr,
    "basin_decades": "{:.2f}".format,
    "gap to adamw": fmt_signed,
    "Δ vs adamw": fmt_signed,
    "gap sd": fmt_loss,
    "gap se": fmt_loss,
    "adamw best lr": fmt_lr,
    "exponent": "{:+.3f}".format,
    "r2": "{:.3f}".format,
}


def table(frame: pl.DataFrame) -> str:
    """``frame`` as Markdown with the report's headers and formats (chains as code, lrs to 3 digits)."""
    headers = dict(HEADERS)
    formats = dict(FORMATS)
    for column in frame.columns:
        family, _, role = column.partition(".")
        if family == "chain" and role:
            headers[column], formats[column] = f"{role} chain", code
        elif family == "lr" and role:
            headers[column], formats[column] = f"lr {role}", fmt_lr
        elif family == "probe" and role:
            headers[column], formats[column] = f"{role} probe", "{:.3g}".format
    return markdown_table(frame, formats=formats, headers=headers)
