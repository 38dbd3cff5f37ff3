"""Figures: drawn without layout warnings, the same bytes for the same data."""

import warnings

import optuna
import polars as pl
import pytest

from optispace.report import build_report, figures
from optispace.report.synthetic import known_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def report():
    return build_report(known_study())


def test_format_bytes():
    assert [figures.format_bytes(n) for n in (0, 512, 1536, 3 * 1024**2, 5 * 1024**4)] == [
        "0 B",
        "512 B",
        "1.5 KiB",
        "3.0 MiB",
        "5120.0 GiB",
    ]


def draw_all(report, folder):
    points = report.trials.filter(pl.col("val_loss").is_not_null())
    top = report.trials.join(report.structures.select("structure", "label", "rank"), on="structure")
    return [
        figures.pareto_figure(points, report.front, report.structures, folder / "pareto.png"),
        figures.sensitivity_figure(
            top, [("embed", "embed"), ("matrix", "matrix")], 0.2, folder / "sensitivity.png"
        ),
        figures.curves_figure(report.best_curves, folder / "curves.png"),
        figures.map_figure(report.shares, folder / "map.png"),
        figures.marginal_figure(report.shares, 0.02, folder / "marginal.png"),
    ]


def test_figures_draw_cleanly_and_deterministically(report, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with warnings.catch_warnings():
        # A collapsed constrained layout (unreadable figure) is only a warning in matplotlib.
        warnings.simplefilter("error")
        first = draw_all(report, tmp_path / "a")
    second = draw_all(report, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_pareto_axis_takes_a_structure_with_no_state(tmp_path):
    points = pl.DataFrame(
        {
            "number": [0, 1, 2],
            "structure": ["a", "b", "c"],
            "val_loss": [3.6, 3.3, 3.2],
            "state_bytes": [0, 4096, 2**20],
        }
    )
    labels = pl.DataFrame({"structure": ["a", "b", "c"], "label": ["S3", "S2", "S1"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = figures.pareto_figure(points, points, labels, tmp_path / "p.png")
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("state_bytes", [[118656] * 3, [118656, 118656, 118660], [0, 0, 0]])
def test_pareto_axis_of_equal_state_keeps_a_few_ticks(state_bytes):
    # Equal counts once put a tick on every byte of the axis (thousands of ticks, a minute to draw).
    fig, ax = figures.new_figure()
    figures._bytes_axis(ax, pl.Series(state_bytes))
    ax.scatter(state_bytes, [3.0, 3.1, 3.2])
    fig.canvas.draw()
    assert 1 <= len(ax.get_xticks()) <= 12


def test_new_figure_shapes():
    _, ax = figures.new_figure()
    _, axes = figures.new_figure(2, 2)
    assert hasattr(ax, "plot") and axes.shape == (2, 2)
