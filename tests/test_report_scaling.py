"""The report's scaling section: the power-law fit recovers known exponents, best and paired gaps per
axis value are the known ones, and the section (Markdown and figure) is the same bytes twice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optispace.proxies.train import RunRecord
from optispace.report.build import build_report
from optispace.report.scaling import best_at, gaps, point_gaps, power_law, recipe_lr_ranges, scale_axes
from optispace.report.sections import markdown
from optispace.report.write import write_report


@given(
    st.floats(0.1, 100.0),
    st.floats(-2.0, 2.0).filter(lambda b: abs(b) >= 0.01),
    st.lists(st.floats(1.0, 1e4), min_size=2, max_size=8, unique=True).filter(
        lambda xs: max(xs) / min(xs) > 1.5
    ),
)
def test_the_power_law_fit_recovers_a_known_exponent(a: float, b: float, xs: list[float]) -> None:
    x = np.array(xs)
    fitted_a, fitted_b, r2 = power_law(x, a * x**b)
    assert fitted_b == pytest.approx(b, abs=1e-6)
    assert fitted_a == pytest.approx(a, rel=1e-6)
    assert r2 == pytest.approx(1.0)


def test_noise_lowers_the_fit_quality_but_the_exponent_stays_close() -> None:
    x = np.array([16.0, 32, 64, 128, 256, 512])
    noise = np.exp(np.array([0.02, -0.03, 0.01, 0.03, -0.02, 0.0]))
    _, b, r2 = power_law(x, 5.0 * x**-0.3 * noise)
    assert b == pytest.approx(-0.3, abs=0.03) and 0.9 < r2 < 1.0


def test_best_per_value_and_paired_gaps_are_the_known_ones() -> None:
    trials = pl.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "group": ["adamw", "adamw", "ember", "ember", "adamw"],
            "val_loss": [4.0, 3.5, 3.3, 3.0, None],
            "scale.dim": [16.0, 16.0, 16.0, 32.0, 32.0],
            "lr.matrix": [1e-3, 3e-3, 1e-2, 1e-2, 1e-3],
            "state_bytes": [8] * 5,
            "seeds": [[0, 1]] * 5,
            "seed_losses": [[4.1, 3.9], [3.6, 3.4], [3.2, 3.4], [3.0, 3.0], [None, None]],
        }
    )
    best = best_at(trials, ["dim"])
    assert best.select("group", "value", "best_loss", "best_lr", "n_trials", "best_trial").rows() == [
        ("adamw", 16.0, 3.5, 3e-3, 2, 1),
        ("ember", 16.0, 3.3, 1e-2, 1, 2),
        ("ember", 32.0, 3.0, 1e-2, 1, 3),
    ]
    gap = gaps(best)  # ember at dim 16 against adamw's best there, seed by seed: -0.4 and 0.0
    assert gap.rows() == [("ember", "dim", 16.0, pytest.approx(-0.2), pytest.approx(math.sqrt(0.08)), 2)]


def test_the_gap_at_each_grid_point_pairs_the_best_trials_at_that_point() -> None:
    # At (16, 4) ember beats adamw; at (16, 8) adamw is best overall, so the best over batch sizes
    # at dim 16 hides the first point. ember at (32, 4) has no adamw to pair with.
    trials = pl.DataFrame(
        {
            "number": [0, 1, 2, 3, 4, 5],
            "group": ["adamw", "ember", "adamw", "ember", "adamw", "ember"],
            "val_loss": [3.1, 2.95, 2.5, 2.6, 2.7, 2.0],
            "scale.dim": [16.0, 16.0, 16.0, 16.0, 16.0, 32.0],
            "scale.batch_size": [4.0, 4.0, 8.0, 8.0, 8.0, 4.0],
            "lr.matrix": [1e-3, 3e-3, 1e-3, 1e-2, 3e-3, 1e-2],
            "state_bytes": [8] * 6,
            "seeds": [[0, 1]] * 6,
            "seed_losses": [[3.0, 3.2], [2.9, 3.0], [2.5, 2.5], [2.6, 2.6], [2.7, 2.7], [2.0, 2.0]],
        }
    )
    points = point_gaps(trials, ["dim", "batch_size"])
    assert points.select("group", "scale.dim", "scale.batch_size", "best_lr", "reference_lr").rows() == [
        ("ember", 16.0, 4.0, 3e-3, 1e-3),
        ("ember", 16.0, 8.0, 1e-2, 1e-3),
    ]
    assert points["gap"].to_list() == pytest.approx([-0.15, 0.1])
    assert points["gap_se"].to_list() == pytest.approx([math.sqrt(0.005) / math.sqrt(2), 0.0])
    assert point_gaps(trials, ["dim"]).is_empty()


def test_the_swept_axes_are_the_lists_in_proxy() -> None:
    assert scale_axes({"proxy": {"tier": "tiny", "batch_size": [4, 8], "dim": [16, 32], "layers": 2}}) == [
        "dim",
        "batch_size",
    ]
    assert scale_axes({"proxy": {"tier": "tiny"}}) == []


SWEPT = """
[study]
name = "swept"
question = "How do adamw and ember scale with width?"
seed = 0
trials = 9
seeds = [0, 1]
sampler = "grid"

[proxy]
tier = "tiny"
steps = 4
dim = [16, 32, 64]

[recipes]
adamw = {lr = {values = [1e-3, 3e-3]}}
ember = {lr = 3e-3}
"""


@dataclass(frozen=True)
class PowerLawTrainer:
    """Loss ``5 * dim^-0.3`` (ember 2% lower), ``+ |log10 lr + 2.5| / 10``, ``+ seed / 100``."""

    def __call__(self, config: dict, on_eval) -> RunRecord:
        ember = "factored" in config["recipe"]["embed"]
        lr = config["role_lr"]["matrix"]
        loss = 5.0 * config["shape"]["dim"] ** -0.3 * (0.98 if ember else 1.0)
        loss += abs(math.log10(lr) + 2.5) / 10 + config["seed"] / 100
        on_eval(4, 512, loss)
        return RunRecord(config=config, corpus={"fingerprint": "fake"}, final_val_loss=loss,
                         state_bytes={"matrix": 8}, device="cpu")


@pytest.fixture(scope="module")
def swept_study(searched) -> optuna.Study:
    return searched(SWEPT, PowerLawTrainer(), 9)


def test_the_section_shows_the_fitted_exponent_and_the_gap(swept_study: optuna.Study) -> None:
    report = build_report(swept_study)
    fits = report.scale_fits.rows(named=True)
    assert [f["group"] for f in fits] == ["adamw", "ember"]
    for fit in fits:
        assert fit["exponent"] == pytest.approx(-0.3, abs=0.02) and fit["points"] == 3
    gap = report.scale_gaps.sort("value")
    assert gap["gap"].to_list() == pytest.approx([-0.02 * 5.0 * d**-0.3 for d in (16, 32, 64)])
    assert report.scale_best.filter(pl.col("group") == "adamw")["best_lr"].to_list() == [3e-3] * 3
    assert report.scale_points.is_empty()  # one axis: its table is the grid


def test_a_best_lr_at_an_end_of_the_lrs_tried_is_flagged(swept_study: optuna.Study) -> None:
    report = build_report(swept_study)
    edges = dict(report.scale_best.select("group", "lr_edge").unique().sort("group").iter_rows())
    assert edges == {"adamw": "high", "ember": None}  # adamw tried 1e-3 and 3e-3; ember one lr
    assert "**The best lr is at an end of the lrs tried** for adamw (high)" in markdown(report, ())


def test_the_lrs_a_recipe_tried_are_read_from_each_form_of_its_entry() -> None:
    recipes = {"a": {"lr": {"values": [3e-3, 1e-3, 1e-2]}}, "b": {"lr": [1e-4, 1e-2]}, "c": {"lr": 1e-3},
               "d": {"recipe": "ember", "lr": {"values": [2e-3]}}}
    assert recipe_lr_ranges({"recipes": recipes}) == {"a": (1e-3, 1e-2), "b": (1e-4, 1e-2)}
    assert recipe_lr_ranges({"roles": {}}) == {}


def test_the_scaling_section_is_the_same_bytes_twice(swept_study: optuna.Study, tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        write_report(build_report(swept_study), out)
    for name in ("report.md", "scaling.png"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    markdown = (outs[0] / "report.md").read_text()
    assert "## Scaling" in markdown and "### Against dim" in markdown and "![Best loss" in markdown
