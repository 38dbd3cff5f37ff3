"""A study's report as data: every frame the report shows, computed once (``build_report``).

``build_report(study, tolerance=None)`` reads the trials (``optispace.report.frames``) and runs every
analysis (``optispace.report.analyses``); ``optispace.report.write`` turns the result into files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
import polars as pl

from optispace.report import against, analyses, frames, scaling

# Used when neither the command line nor the study states a tolerance (in val loss, nats/token).
DEFAULT_TOLERANCE = 0.02
# Structures drawn in the sensitivity and curve figures, and listed in the structures table.
TOP_FIGURE = 6
TOP_TABLE = 30
# The sensitivity figure's y axis spans this many tolerances above the least loss.
SENSITIVITY_WINDOW = 10


@dataclass(frozen=True)
class Report:
    """Everything a report shows, as sorted polars frames."""

    info: frames.StudyInfo
    tolerance: float
    tolerance_source: str
    trials: pl.DataFrame
    curves: pl.DataFrame
    params: pl.DataFrame
    structures: pl.DataFrame
    shares: pl.DataFrame
    importance: pl.DataFrame
    importance_note: str | None
    front: pl.DataFrame
    sensitivity: pl.DataFrame
    best_curves: pl.DataFrame
    #: The scaling section's frames (``optispace.report.scaling``); empty when nothing was swept.
    scale_axes: tuple[str, ...] = ()
    scale_best: pl.DataFrame = field(default_factory=pl.DataFrame)
    scale_fits: pl.DataFrame = field(default_factory=pl.DataFrame)
    scale_gaps: pl.DataFrame = field(default_factory=pl.DataFrame)
    scale_points: pl.DataFrame = field(default_factory=pl.DataFrame)
    #: The "Recipes against adamw" frame (``optispace.report.against``); empty when it does not apply.
    versus: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def roles(self) -> list[str]:
        return analyses.chain_roles(self.trials)

    @property
    def probes(self) -> list[str]:
        """The probes the trials recorded (``probe.<name>`` columns), by name."""
        return frames.probe_names(self.trials.columns)

    @property
    def top_sensitivity(self) -> pl.DataFrame:
        """The lr sensitivity rows of the ``TOP_FIGURE`` best structures (figure and table)."""
        return self.sensitivity.filter(pl.col("rank") <= TOP_FIGURE)


def build_report(study: optuna.Study, tolerance: float | None = None) -> Report:
    """Read ``study`` and run every analysis; ``tolerance`` overrides the study's."""
    info = frames.study_info(study)
    if tolerance is not None:
        source = "command line"
    elif info.tolerance is not None:
        tolerance, source = info.tolerance, "search file"
    else:
        tolerance, source = DEFAULT_TOLERANCE, "default; the study states none"
    trials_list = study.get_trials(deepcopy=False)
    trials = frames.trials_frame(trials_list)
    curves = frames.curves_frame(trials_list)
    params = frames.params_frame(trials_list)
    structs = analyses.sufficiency(analyses.structures(trials), tolerance)
    imp, note = analyses.importance(study, params)
    axes = scaling.scale_axes(info.search)
    grouped = scaling.with_groups(trials, structs, info.search)
    best = scaling.with_lr_edges(scaling.best_at(grouped, axes), info.search)
    return Report(
        info=info,
        tolerance=tolerance,
        tolerance_source=source,
        trials=trials,
        curves=curves,
        params=params,
        structures=structs,
        shares=analyses.choice_map(structs, trials, params),
        importance=imp,
        importance_note=note,
        front=analyses.pareto_front(trials, info.maximize),
        sensitivity=analyses.lr_sensitivity(trials, structs, tolerance, analyses.lr_ranges(info.search)),
        best_curves=analyses.best_curves(curves, structs, TOP_FIGURE),
        scale_axes=tuple(axes),
        scale_best=best,
        scale_fits=scaling.fits(best),
        scale_gaps=scaling.gaps(best),
        scale_points=scaling.point_gaps(grouped, axes),
        versus=against.against_reference(trials, structs, info.search, info.maximize),
    )
