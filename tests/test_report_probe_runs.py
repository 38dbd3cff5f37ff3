"""Frames and seed aggregates of probe runs, on hand-written run dicts with known answers."""

import pytest

from optispace.report import probe_runs


def _run(recipe: str, seed: int, scale: float) -> dict:
    bucket = {
        "ray_fit": 0.9 * scale,
        "ray_fit_null": 0.6,
        "ray_fit_margin": 0.9 * scale - 0.6,
        "cos_total": 0.5,
        "cos_total_null": 0.3,
        "cos_total_margin": 0.2,
        "cos_successive": 0.1,
        "cos_successive_null": 0.0,
        "cos_successive_margin": 0.1,
        "beats_null": 0.8,
    }
    tail = {"max": 10.0 * scale, "p99": 3.0, "median": 1e-3, "row": 7, "seen": 2, "first_seen": 5}
    return {
        "recipe": recipe,
        "seed": seed,
        "final_val_loss": 5.0 + seed,
        "diverged": None,
        "tokens_per_s": 1000.0,
        "probes": {
            "ray": {
                "value": 0.9 * scale - 0.6,
                "tables": {
                    "embed": {
                        "rows": 4,
                        "buckets": [
                            {"bucket": "all", "tokens": 4, **bucket},
                            {"bucket": "10-99", "tokens": 1, **bucket},
                            {"bucket": "1-9", "tokens": 3, **bucket},
                        ],
                    }
                },
            },
            "geometry": {
                "value": 0.1,
                "summary": {
                    "vector": {"autocorrelation": 0.5},
                    "embed": {"autocorrelation": 0.1 * scale, "nonzero_rows": 0.2, "factored_error": 0.3},
                },
                "series": [{"step": 1, "role": "embed", "autocorrelation": 0.1 * scale}],
            },
            "outliers": {
                "value": 10.0 * scale,
                "summary": {
                    "embed": {"batch": {"early_max": 2.0, "late_max": 10.0 * scale, "late_p99": 3.0}}
                },
                "series": [
                    {"step": 1, "role": "embed", "batch": {**tail, "previously_seen": -1}, "moved": None},
                    {"step": 11, "role": "embed", "batch": {**tail, "previously_seen": 1}, "moved": None},
                ],
            },
        },
    }


RUNS = [_run("ember", 1, 1.0), _run("adamw", 0, 1.0), _run("adamw", 1, 2.0), _run("adamw", 2, 3.0)]


def test_runs_frame_is_sorted_and_carries_each_probe_value():
    frame = probe_runs.runs_frame(RUNS)
    assert frame.select("recipe", "seed").rows() == [("adamw", 0), ("adamw", 1), ("adamw", 2), ("ember", 1)]
    assert frame["outliers.value"].to_list() == [10.0, 20.0, 30.0, 10.0]


def test_ray_summary_orders_buckets_rare_to_frequent_and_ranges_the_margin_over_seeds():
    summary = probe_runs.ray_summary(probe_runs.ray_frame(RUNS))
    adamw = summary.filter(recipe="adamw")
    assert adamw["bucket"].to_list() == ["all", "1-9", "10-99"]
    assert adamw["seeds"].to_list() == [3, 3, 3]
    assert adamw["ray_fit_margin"][0] == pytest.approx(0.9 * 2 - 0.6)
    assert (adamw["ray_fit_margin_min"][0], adamw["ray_fit_margin_max"][0]) == pytest.approx((0.3, 2.1))


def test_geometry_summary_puts_roles_in_canonical_order():
    summary = probe_runs.geometry_summary(RUNS)
    assert summary.select("role", "recipe").rows() == [
        ("embed", "adamw"),
        ("embed", "ember"),
        ("vector", "adamw"),
        ("vector", "ember"),
    ]
    assert summary["autocorrelation"][0] == pytest.approx(0.2)
    assert summary["factored_error"][0] == pytest.approx(0.3)
    assert summary["nonzero_rows"][2] is None


def test_outlier_summary_takes_the_median_over_seeds_per_phase():
    summary = probe_runs.outlier_summary(RUNS).filter(recipe="adamw")
    assert summary.select("phase", "max", "max_min", "max_max").rows() == [
        ("early", 2.0, 2.0, 2.0),
        ("late", 20.0, 10.0, 30.0),
    ]
    assert summary["p99"].to_list() == [None, 3.0]


def test_outlier_rows_say_how_rare_the_argmax_rows_are():
    rows = probe_runs.outlier_rows(probe_runs.outlier_frame(RUNS)).filter(recipe="adamw")
    assert rows.select("population", "seen", "share_seen_le_10", "steps_since_seen").rows() == [
        ("batch", 2.0, 1.0, 10.0)
    ]
