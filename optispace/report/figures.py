"""PNG figures of a report, drawn with matplotlib's object API (no pyplot, no global backend).

Helpers other reports reuse (the probe report does):

- ``new_figure(nrows, ncols, width=, height=)``: a Figure and its axes in the house style (fonts
  legible at the width a Markdown viewer shows, light grid, no top/right spines);
- ``save_png(fig, path)``: writes the PNG without a timestamp or software tag, so the same figure
  gives the same bytes;
- ``format_bytes(n)``: ``12.0 KiB`` style byte counts for axes and tables;
- ``COLORS``: the colour of the k-th series, the same in every figure of a report.

The report's own figures: ``pareto_figure``, ``sensitivity_figure``, ``curves_figure``,
``map_figure``, ``marginal_figure``, ``scaling_figure``. Each takes frames from
``optispace.report.analyses`` (or ``optispace.report.scaling``) and a path, and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import (
    EngFormatter,
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MultipleLocator,
    NullFormatter,
    NullLocator,
)

STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 120,
}
COLORS: tuple[str, ...] = tuple(matplotlib.colormaps["tab10"].colors)  # type: ignore[attr-defined]
_MUTED = "#9a9a9a"


def new_figure(
    nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float = 4.5
) -> tuple[Figure, Any]:
    """A figure of ``nrows`` x ``ncols`` axes in the house style; axes squeezed as in subplots."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG with no metadata that changes between runs; return ``path``."""
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, format="png", metadata={"Software": None})
    return path


def format_bytes(n: float, spec: str = ".1f") -> str:
    """``n`` bytes in binary units, digits per ``spec``: ``0 B``, ``512 B``, ``12.0 KiB``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:{spec}} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def pareto_figure(
    points: pl.DataFrame, front: pl.DataFrame, labels: pl.DataFrame, path: Path, objective: str = "val loss"
) -> Path:
    """The objective (val loss) vs optimizer state bytes: every finished trial, the front
    highlighted and labelled.

    ``points``: number, val_loss, state_bytes; ``front``: the same for the front's trials;
    ``labels``: structure -> label, to name each front point by its structure; ``objective``: the
    objective in words.
    """
    fig, ax = new_figure(width=7.0, height=4.5)
    ax.scatter(points["state_bytes"], points["val_loss"], s=12, color=_MUTED, alpha=0.5, label="trial")
    named = front.join(labels.select("structure", "label"), on="structure", how="left").with_columns(
        x=pl.col("state_bytes")
    )
    ax.step(named["x"], named["val_loss"], where="post", color=COLORS[0], linewidth=1.2)
    ax.scatter(named["x"], named["val_loss"], s=36, color=COLORS[0], zorder=3, label="Pareto front")
    for i, row in enumerate(named.iter_rows(named=True)):
        # Alternate above/below so neighbouring labels on a steep front do not collide.
        dy = 8 if i % 2 == 0 else -14
        ax.annotate(
            row["label"] or f"#{row['number']}",
            (row["x"], row["val_loss"]),
            textcoords="offset points",
            xytext=(5, dy),
            fontsize=9,
        )
    _bytes_axis(ax, points["state_bytes"])
    ax.margins(x=0.06, y=0.08)
    ax.set_xlabel("optimizer state (bytes, binary units)")
    ax.set_ylabel("final val loss (nats/token)" if objective == "val loss" else f"final {objective}")
    ax.set_title(f"{objective[0].upper()}{objective[1:]} vs optimizer state")
    ax.legend(loc="best")
    return save_png(fig, path)


def sensitivity_figure(
    points: pl.DataFrame, panels: list[tuple[str, str]], window: float, path: Path
) -> Path:
    """Val loss vs lr, one panel per (role, title) of ``panels``, one colour per structure.

    ``points``: label, rank, val_loss (null when diverged), diverged, and ``lr.<role>`` columns.
    The y axis spans ``window`` above the least loss; a loss above it is drawn as a triangle at the
    top edge, a diverged trial as an x there.
    """
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, width=8.0 if ncols == 2 else 6.0, height=3.0 * nrows + 1.2)
    axes = np.atleast_1d(axes).ravel()
    labels = points.select("label", "rank").unique().sort("rank")["label"].to_list()
    finished = points.filter(pl.col("val_loss").is_not_null())
    low = float(finished["val_loss"].min()) if len(finished) else 0.0
    high = min(float(finished["val_loss"].max()) if len(finished) else 1.0, low + window)
    pad = 0.05 * max(high - low, 1e-3)
    top = high + pad
    for ax, (role, title) in zip(axes, panels, strict=False):
        lr = f"lr.{role}"
        for k, label in enumerate(labels):
            mine = points.filter(pl.col("label") == label).sort(lr)
            color = COLORS[k % len(COLORS)]
            inside = mine.filter(pl.col("val_loss") <= high)
            above = mine.filter(pl.col("val_loss") > high)
            bad = mine.filter(pl.col("diverged"))
            ax.plot(inside[lr], inside["val_loss"], "o", color=color, ms=4, label=label)
            # Empty artists drawn outside the axes collapse constrained layout: skip them.
            if len(above):
                ax.plot(above[lr], [top] * len(above), "^", color=color, ms=5, mfc="none", clip_on=False)
            if len(bad):
                ax.plot(bad[lr], [top] * len(bad), "x", color=color, ms=6, clip_on=False)
        _lr_axis(ax, points[lr])
        ax.set_ylim(low - pad, top)
        ax.set_title(title)
        ax.set_xlabel(f"lr of {title}")
        ax.set_ylabel("final val loss (nats/token)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6), title="structure")
    fig.suptitle("Learning-rate sensitivity (top edge: \u25b3 loss above the axis, \u00d7 diverged)")
    return save_png(fig, path)


def curves_figure(curves: pl.DataFrame, path: Path) -> Path:
    """Val loss vs tokens (vs step when tokens are unknown) of each structure's best trial.

    ``curves``: label, number, step, tokens, val_loss, sorted by structure rank then step.
    """
    use_tokens = curves["tokens"].null_count() == 0
    x = "tokens" if use_tokens else "step"
    fig, ax = new_figure(width=7.0, height=4.5)
    finite = curves.filter(pl.col("val_loss").is_finite())
    low, high = _loss_window(finite["val_loss"], head=1.0)
    for k, label in enumerate(dict.fromkeys(curves["label"].to_list())):
        mine = finite.filter(pl.col("label") == label)
        number = mine["number"][0] if len(mine) else None
        ax.plot(mine[x], mine["val_loss"], color=COLORS[k % len(COLORS)], label=f"{label} (trial {number})")
    ax.set_ylim(low, high)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("tokens seen" if use_tokens else "step")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Val loss of the best trial of each top structure")
    fig.legend(loc="outside right upper", title="structure")
    return save_png(fig, path)


def map_figure(shares: pl.DataFrame, path: Path) -> Path:
    """Heat map, role x (family: choice): the share of sufficient structures using each choice.

    ``shares``: role, family, choice, share; a role that does not offer a choice is left blank.
    """
    fig, ax = _choice_grid(
        shares, "share", "{:.0%}".format, cmap="viridis", vmin=0.0, vmax=1.0, dark=lambda v: v < 0.6
    )
    ax.set_title("Share of sufficient structures using each choice")
    fig.colorbar(ax.images[0], ax=ax, label="share of sufficient structures", shrink=0.9)
    return save_png(fig, path)


def marginal_figure(shares: pl.DataFrame, tolerance: float, path: Path) -> Path:
    """Heat map, role x (family: choice): ``gap``, the least difference to S1 of a structure using
    the choice, i.e. the loss given up by committing the role to it; the colour saturates at ten
    tolerances and a choice no finished structure used is left blank.
    """
    top = 10 * tolerance
    fig, ax = _choice_grid(
        shares, "gap", "{:+.3f}".format, cmap="viridis_r", vmin=0.0, vmax=top, dark=lambda v: v >= 0.4 * top
    )
    ax.set_title(f"Cost of committing a role to a choice (tolerance {tolerance:g})")
    fig.colorbar(ax.images[0], ax=ax, label="Δ vs S1, best structure using it", shrink=0.9)
    return save_png(fig, path)


def _choice_grid(
    shares: pl.DataFrame, column: str, text: Callable[[float], str], *, cmap: str, vmin: float, vmax: float,
    dark: Callable[[float], bool],
) -> tuple[Figure, Any]:
    """A role x (family: choice) heat map of ``shares[column]``, each cell labelled with ``text``, in
    white where ``dark(value)`` says the colour under it is dark."""
    # Columns grouped by family (in order of first appearance), choices in order within a family.
    pairs = list(dict.fromkeys(zip(shares["family"], shares["choice"], strict=True)))
    families = list(dict.fromkeys(f for f, _ in pairs))
    pairs.sort(key=lambda pair: families.index(pair[0]))
    columns = [f"{f}: {c}" for f, c in pairs]
    roles = list(dict.fromkeys(shares["role"].to_list()))
    grid = np.full((len(roles), len(columns)), np.nan)
    for row in shares.iter_rows(named=True):
        if row[column] is not None:
            grid[roles.index(row["role"]), columns.index(f"{row['family']}: {row['choice']}")] = row[column]
    fig, ax = new_figure(width=max(5.0, 0.55 * len(columns) + 2.5), height=1.0 + 0.55 * len(roles) + 1.8)
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_facecolor("#eeeeee")
    ax.grid(False)
    for i, j in zip(*np.nonzero(~np.isnan(grid)), strict=True):
        value = float(grid[i, j])
        colour = "white" if dark(value) else "black"
        ax.text(j, i, text(value), ha="center", va="center", fontsize=8, color=colour)
    for j in range(1, len(pairs)):
        if pairs[j][0] != pairs[j - 1][0]:
            ax.axvline(j - 0.5, color="white", linewidth=3)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(roles)), roles)
    ax.set_xlabel("primitive family: choice")
    ax.set_ylabel("parameter role")
    return fig, ax


def _bytes_axis(ax: Any, values: pl.Series) -> None:
    """x axis for byte counts: log base 2 with power-of-two ticks when they span >= 16x (symlog when
    a structure keeps no state, 0 bytes), linear otherwise; tick labels in binary units."""
    positive = values.filter(values > 0)
    if not positive.is_empty() and values.max() >= 16 * positive.min():
        low, high = math.floor(math.log2(positive.min())), math.ceil(math.log2(values.max()))
        stride = max(1, math.ceil((high - low + 1) / 7))
        ticks = [2.0**k for k in range(low, high + 1, stride)]
        if values.min() == 0:
            ax.set_xscale("symlog", base=2, linthresh=float(positive.min()))
            ticks = [0.0, *ticks]
        else:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [_tick_bytes(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        # Ticks at multiples of a power of two, so that labels come out round (16 KiB, 32 KiB).
        spread = float(values.max() - values.min()) if len(values) else 0.0
        largest = float(values.max()) if len(values) else 0.0
        if spread < 0.1 * largest:
            # Nearly equal counts: show +-5 % around them, or the ticks would fall one byte apart.
            middle = (float(values.max()) + float(values.min())) / 2
            ax.set_xlim(middle - 0.05 * largest, middle + 0.05 * largest)
            spread = 0.1 * largest
        step = 2.0 ** math.floor(math.log2(spread / 4)) if spread >= 4 else 1.0
        ax.xaxis.set_major_locator(MultipleLocator(step))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_bytes(v)))


def _tick_bytes(n: float) -> str:
    """A tick label in binary units without needless decimals: ``0``, ``4 KiB``, ``1.5 MiB``."""
    return "0" if n == 0 else format_bytes(n, ".3g")


def _lr_axis(ax: Any, lrs: pl.Series) -> None:
    """Log x axis labelled in plain numbers at 1, 2, 5 x 10^k (only 10^k beyond two decades)."""
    ax.set_xscale("log")
    finite = lrs.drop_nulls()
    span = math.log10(finite.max() / finite.min()) if len(finite) and finite.min() > 0 else 0.0
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 2 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _loss_window(losses: pl.Series, head: float = 0.0) -> tuple[float, float]:
    """y limits from the least loss to the median plus twice its distance from the least, plus
    ``head`` (early evaluations would otherwise flatten everything near the best)."""
    if losses.is_empty():
        return 0.0, 1.0
    low, median, high = float(losses.min()), float(losses.median()), float(losses.max())
    top = min(high, median + 2 * (median - low) + head)
    pad = 0.05 * max(top - low, 1e-3)
    return low - pad, top + pad


def scaling_figure(best: pl.DataFrame, fits: pl.DataFrame, gaps: pl.DataFrame, path: Path) -> Path:
    """Per swept axis (a row): best loss (log-log, fitted power law dashed), best lr, paired gap to
    adamw with the seeds' sd as error bars; one colour per group, the same in every panel."""
    axes_names = list(dict.fromkeys(best["axis"].to_list()))
    groups = sorted(set(best["group"].to_list()))
    fig, grid = new_figure(len(axes_names), 3, width=11.0, height=3.2 * len(axes_names))
    grid = np.atleast_2d(grid)
    for row, axis in zip(grid, axes_names, strict=True):
        for k, group in enumerate(groups):
            color = COLORS[k % len(COLORS)]
            part = best.filter((pl.col("axis") == axis) & (pl.col("group") == group)).sort("value")
            x = part["value"].to_numpy()
            row[0].plot(x, part["best_loss"].to_numpy(), "o-", color=color, label=group)
            fit = fits.filter((pl.col("axis") == axis) & (pl.col("group") == group))
            if fit.height:
                a, b = fit["coefficient"][0], fit["exponent"][0]
                row[0].plot(x, a * x**b, "--", color=color, alpha=0.6)
            lrs = part.filter(pl.col("best_lr").is_not_null())
            row[1].plot(lrs["value"].to_numpy(), lrs["best_lr"].to_numpy(), "o-", color=color)
            gap = gaps.filter((pl.col("axis") == axis) & (pl.col("group") == group)).sort("value")
            if gap.height:
                sd = gap["gap_sd"].fill_null(0.0).to_numpy()
                row[2].errorbar(gap["value"].to_numpy(), gap["gap"].to_numpy(), yerr=sd, fmt="o-",
                                color=color, capsize=3)
        values = sorted(set(best.filter(pl.col("axis") == axis)["value"].to_list()))
        for ax in row:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(values))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
        for ax in row[:2]:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        row[0].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # losses span < a decade
        row[2].axhline(0.0, color=_MUTED, linewidth=1)
        row[0].set_ylabel("best val loss")
        row[1].set_ylabel("best lr")
        row[2].set_ylabel("gap to adamw (val loss)")
        for ax in row:
            ax.set_xlabel(axis)
    grid[0][0].legend()
    return save_png(fig, path)
