"""The token-geometry report: Markdown tables, PNG figures and Parquet frames from probe runs.

Built with the study reports' machinery (``optispace.report.tables.markdown_table``,
``optispace.report.figures.new_figure`` / ``save_png`` / ``COLORS``), so the same runs give the same
bytes. ``write_probe_report(runs, out, header)`` writes into ``out``:

- ``README.md``: the runs, then one section per claim of the paper with its table and figure;
- ``ray_fit.png``: median ray fit per frequency decade, each recipe beside its null (dashed);
- ``outlier_ratio.png``: the largest in-batch update ratio per sampled step (log scale);
- ``autocorrelation.png``: lag-1 gradient autocorrelation per role, range over seeds as error bars;
- ``runs.json`` (the header and what the probes recorded, to rebuild the report) and one Parquet
  file per frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from matplotlib.ticker import FuncFormatter

from optispace.probes.tracking import bucket_order
from optispace.report import probe_runs
from optispace.report.figures import COLORS, new_figure, save_png
from optispace.report.tables import markdown_table

RUNS_FILE = "runs.json"
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # ratios as 2, 30, 1000 rather than 10^x


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _ratio(value: float) -> str:
    return f"{value:.3g}x"


def _colors(frame: pl.DataFrame) -> dict[str, str]:
    """One colour per recipe, by sorted name, so a recipe has the same colour in every figure."""
    return {recipe: COLORS[i % len(COLORS)] for i, recipe in enumerate(sorted(frame["recipe"].unique()))}


def ray_figure(summary: pl.DataFrame, path: Path) -> Path:
    """Per table, median ray fit by frequency decade for each recipe, its null dashed in the same colour."""
    tables = summary["table"].unique(maintain_order=True).to_list()
    buckets = bucket_order(b for b in summary["bucket"] if b != "all")
    colors = _colors(summary)
    fig, axes = new_figure(1, len(tables), width=4.2 * len(tables), height=3.8)
    axes = axes if len(tables) > 1 else [axes]
    for ax, table in zip(axes, tables, strict=True):
        rows = summary.filter(pl.col("table") == table, pl.col("bucket") != "all")
        for recipe, color in colors.items():
            mine = rows.filter(pl.col("recipe") == recipe)
            x = [buckets.index(b) for b in mine["bucket"]]
            ax.plot(x, mine["ray_fit"], marker="o", color=color, label=recipe)
            ax.plot(x, mine["ray_fit_null"], linestyle="--", color=color, alpha=0.7)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_title(f"{table}: ray fit (dashed: null)")
        ax.set_xlabel("times the token was seen")
        ax.set_ylabel("median ray fit")
        ax.tick_params(axis="x", labelrotation=30)
    axes[0].legend(loc="lower left")
    return save_png(fig, path)


def outlier_figure(outliers: pl.DataFrame, path: Path) -> Path:
    """Per table, the median over seeds of the largest in-batch update ratio at each sampled step."""
    batch = outliers.filter(pl.col("population") == "batch")
    per_step = batch.group_by("recipe", "table", "step").agg(pl.col("max", "p99").median()).sort("step")
    tables = batch["table"].unique(maintain_order=True).to_list()
    fig, axes = new_figure(1, len(tables), width=4.2 * len(tables), height=3.8)
    axes = axes if len(tables) > 1 else [axes]
    for ax, table in zip(axes, tables, strict=True):
        for recipe, color in _colors(batch).items():
            mine = per_step.filter(pl.col("recipe") == recipe, pl.col("table") == table)
            ax.plot(mine["step"], mine["max"], color=color, label=recipe)
            ax.plot(mine["step"], mine["p99"], color=color, linestyle="--", alpha=0.7)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PLAIN)
        ax.yaxis.set_minor_formatter(_PLAIN)
        ax.set_title(f"{table}: update / median in-batch row")
        ax.set_xlabel("step")
        ax.set_ylabel("max (solid), p99 (dashed)")
    axes[0].legend(loc="upper left")
    return save_png(fig, path)


def autocorrelation_figure(summary: pl.DataFrame, path: Path) -> Path:
    """Grouped bars: per role, each recipe's mean lag-1 autocorrelation, the range over seeds as a bar."""
    roles = summary["role"].unique(maintain_order=True).to_list()
    colors = _colors(summary)
    fig, ax = new_figure(width=6.5, height=3.8)
    width = 0.8 / len(colors)
    for i, (recipe, color) in enumerate(colors.items()):
        mine = summary.filter(pl.col("recipe") == recipe)
        x = [roles.index(r) + (i - (len(colors) - 1) / 2) * width for r in mine["role"]]
        mean = mine["autocorrelation"].fill_null(float("nan"))
        low = (mean - mine["autocorrelation_min"]).fill_null(0.0)
        high = (mine["autocorrelation_max"] - mean).fill_null(0.0)
        ax.bar(x, mean, width, color=color, label=recipe, yerr=[low, high], capsize=2)
    ax.set_xticks(range(len(roles)), roles)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("lag-1 autocorrelation of the gradient")
    ax.legend(loc="upper left")
    return save_png(fig, path)


def write_probe_report(runs: Sequence[dict], out: Path, header: str) -> Path:
    """Write the report of ``runs`` into ``out`` (created if missing); ``header``: Markdown put first."""
    save_runs(out, header, runs)
    frames = {
        "runs": probe_runs.runs_frame(runs),
        "ray": probe_runs.ray_frame(runs),
        "geometry": probe_runs.geometry_frame(runs),
        "outliers": probe_runs.outlier_frame(runs),
    }
    for name, frame in frames.items():
        frame.write_parquet(out / f"{name}.parquet")
    ray = probe_runs.ray_summary(frames["ray"])
    geometry = probe_runs.geometry_summary(runs)
    outliers = probe_runs.outlier_summary(runs)
    sections = [header.rstrip() + "\n", _runs_section(frames["runs"])]
    if not ray.is_empty():
        ray_figure(ray, out / "ray_fit.png")
        sections.append(_ray_section(ray))
    if not outliers.is_empty():
        outlier_figure(frames["outliers"], out / "outlier_ratio.png")
        sections.append(_outlier_section(outliers, probe_runs.outlier_rows(frames["outliers"])))
    if not geometry.is_empty():
        autocorrelation_figure(geometry, out / "autocorrelation.png")
        sections.append(_geometry_section(geometry))
    path = out / "README.md"
    path.write_text("\n".join(sections))
    return path


def save_runs(out: Path, header: str, runs: Sequence[dict]) -> None:
    """Store the header and the runs in ``out/runs.json`` (``out`` created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    stored = {"header": header, "runs": list(runs)}
    (out / RUNS_FILE).write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")


def read_runs(out: Path) -> tuple[str, list[dict]]:
    """The header and the runs a previous ``write_probe_report`` stored in ``out``."""
    stored = json.loads((out / RUNS_FILE).read_text())
    return stored["header"], stored["runs"]


def _runs_section(runs: pl.DataFrame) -> str:
    return "## Runs\n\n" + markdown_table(runs, headers={"final_val_loss": "final val loss"})


def _ray_section(summary: pl.DataFrame) -> str:
    shown = summary.select(
        "table",
        "bucket",
        "recipe",
        "tokens",
        "ray_fit",
        "ray_fit_null",
        "ray_fit_margin",
        "ray_fit_margin_min",
        "ray_fit_margin_max",
        "cos_successive",
        "cos_successive_null",
        "beats_null",
    )
    return (
        "## 1. Do token rows move along a ray?\n\n"
        "Per token: the share of its trajectory's variance on the first principal component (ray fit) "
        "and the mean cosine between successive displacements, each beside a null model of the same "
        "run (same rows, same displacement norm per interval, random directions). `margin` = observed "
        "minus null, mean over seeds (min and max beside it); `beats null` = share of tokens whose fit "
        "exceeds their own null's. Buckets: how many times the token was seen in training.\n\n"
        "![ray fit](ray_fit.png)\n\n"
        + markdown_table(
            shown,
            formats={c: _signed for c in ("ray_fit_margin", "ray_fit_margin_min", "ray_fit_margin_max")},
            headers={
                "ray_fit": "ray fit",
                "ray_fit_null": "null",
                "ray_fit_margin": "margin",
                "ray_fit_margin_min": "min",
                "ray_fit_margin_max": "max",
                "cos_successive": "cos succ.",
                "cos_successive_null": "null",
                "beats_null": "beats null",
            },
        )
    )


def _outlier_section(summary: pl.DataFrame, rows: pl.DataFrame) -> str:
    ratio_columns = ("max", "max_min", "max_max", "p99")
    return (
        "## 2. Update-size outliers\n\n"
        "Per sampled step and table: each row's update norm over the median row of a population "
        "(`batch`: rows whose token is in the batch; `moved`: all rows that moved; `per_grad`: update "
        "per unit of gradient norm, in-batch rows). `max`: the largest ratio of the phase (first or "
        "second half of the run), median over seeds (min and max over seeds beside it); `p99`: median "
        "per-step 99th percentile.\n\n"
        "![outlier ratio](outlier_ratio.png)\n\n"
        + markdown_table(summary, formats=dict.fromkeys(ratio_columns, _ratio))
        + "\n\nWhich rows are the largest: the median number of times the argmax row's token had been "
        "seen, the share seen at most 10 times, and the median steps since it was previously seen.\n\n"
        + markdown_table(rows)
    )


def _geometry_section(summary: pl.DataFrame) -> str:
    return (
        "## 3. Gradient geometry per role\n\n"
        "Mean over sampled steps, then over seeds: lag-1 autocorrelation of the gradient (uncentred; "
        "min and max over seeds), share of rows with a non-zero gradient, relative error of the factored "
        "second moment `r c / s` against the full per-entry EMA, and the p90/p10 spread of row norms.\n\n"
        "![autocorrelation](autocorrelation.png)\n\n" + markdown_table(summary)
    )
