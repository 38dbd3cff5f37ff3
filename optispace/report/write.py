"""Write a study's report: report.md, PNG figures, trials.parquet and curves.parquet.

``write_report(build_report(study), out)`` writes the files (``optispace.report.build`` computes the
frames, ``optispace.report.sections`` the Markdown, ``optispace.report.figures`` draws). Every frame
is sorted before it is written and nothing depends on the clock, so the same study gives
byte-identical Markdown and Parquet.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from optispace.report import figures, sections
from optispace.report.build import SENSITIVITY_WINDOW, TOP_FIGURE, Report


def write_report(report: Report, out: Path) -> list[Path]:
    """Write report.md, the figures and the Parquet files into ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    frames = [out / "trials.parquet", out / "curves.parquet"]
    report.trials.write_parquet(frames[0])
    report.curves.write_parquet(frames[1])
    drawn = draw_figures(report, out)
    markdown = out / "report.md"
    markdown.write_text(sections.markdown(report, {p.name for p in drawn}), encoding="utf-8")
    return [markdown, *frames, *drawn]


def draw_figures(report: Report, out: Path) -> list[Path]:
    """Draw each figure the report has data for into ``out``: map, marginal effects, Pareto front, lr
    sensitivity, curves, scaling."""
    r = report
    drawn = []
    if not r.shares.is_empty() and r.structures["sufficient"].sum():
        drawn.append(figures.map_figure(r.shares, out / "map.png"))
    if not r.shares.is_empty() and r.shares["gap"].is_not_null().any():
        drawn.append(figures.marginal_figure(r.shares, r.tolerance, out / "marginal.png"))
    if not r.front.is_empty():
        points = r.trials.filter(pl.col("val_loss").is_not_null() & pl.col("state_bytes").is_not_null())
        drawn.append(figures.pareto_figure(points, r.front, r.structures, out / "pareto.png",
                                           r.info.objective_words))
    if not r.top_sensitivity.is_empty():
        drawn.append(_sensitivity_figure(r, out / "sensitivity.png"))
    if not r.best_curves.is_empty():
        drawn.append(figures.curves_figure(r.best_curves, out / "curves.png"))
    if not r.scale_best.is_empty():
        drawn.append(figures.scaling_figure(r.scale_best, r.scale_fits, r.scale_gaps, out / "scaling.png"))
    return drawn


def _sensitivity_figure(r: Report, path: Path) -> Path:
    """Val loss vs lr of the top structures, one panel per group of roles sharing an lr."""
    panels = list(dict.fromkeys(r.top_sensitivity.select("role", "roles").iter_rows()))
    panels.sort(key=lambda panel: r.roles.index(panel[0]))
    top = r.structures.head(TOP_FIGURE).select("structure", "label", "rank")
    points = r.trials.join(top, on="structure").select(
        "label", "rank", "val_loss", "diverged", *[f"lr.{role}" for role, _ in panels]
    )
    return figures.sensitivity_figure(points, panels, SENSITIVITY_WINDOW * r.tolerance, path)
