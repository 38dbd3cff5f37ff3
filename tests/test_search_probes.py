"""Probes in a study: the search file asks for them, each trial records them, the report shows them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import polars as pl
import pytest

from optispace.search.objective import PROBES_ATTR_BYTES, probe_summaries
from optispace.search.run import run_search
from optispace.search.spec import parse_search_text
from optispace.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMOKE = Path(__file__).parent.parent / "searches" / "smoke.toml"


def smoke_with_geometry() -> str:
    """searches/smoke.toml with the geometry probe, 2 trials of 16 steps.

    Study seed 1 draws two structures with different state bytes: with equal ones the report's
    Pareto figure puts a tick on every byte of its axis and takes half a minute to draw.
    """
    text = SMOKE.read_text(encoding="utf-8")
    for old, new in [
        ("seed = 0", "seed = 1"),
        ("trials = 8", "trials = 2"),
        ("steps = 64", 'steps = 16\nprobes = ["geometry"]'),
        ("eval_every = 16", "eval_every = 8"),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    return text


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    url = str(tmp_path_factory.mktemp("study") / "s.journal")
    run_search(parse_search_text(smoke_with_geometry(), "smoke.toml"), url, progress=False)
    return optuna.load_study(study_name="smoke", storage=open_storage(url))


def test_each_trial_records_its_probe_value_and_results(study: optuna.Study) -> None:
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        results = t.user_attrs["probes"]
        assert set(results) == {"geometry"} and "series" not in results["geometry"]
        assert t.user_attrs["probe.geometry"] == results["geometry"]["value"]
        assert -1.0 <= t.user_attrs["probe.geometry"] <= 1.0  # a mean autocorrelation
        assert set(results["geometry"]["summary"]) == {"embed", "head", "matrix", "vector"}
        assert len(json.dumps(t.user_attrs)) < 20_000


def test_the_report_carries_probe_values_per_trial_and_per_structure(
    study: optuna.Study, tmp_path: Path
) -> None:
    from optispace.report.write import build_report, write_report

    report = build_report(study)
    write_report(report, tmp_path)
    trials = pl.read_parquet(tmp_path / "trials.parquet").sort("number")
    assert trials.schema["probe.geometry"] == pl.Float64
    stored = [t.user_attrs["probe.geometry"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert trials["probe.geometry"].to_list() == stored
    assert json.loads(trials["probes"][0]) == study.trials[0].user_attrs["probes"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| geometry probe |" in markdown
    means = report.structures["probe.geometry"].to_list()
    by_structure = trials.group_by("structure").agg(pl.col("probe.geometry").mean())
    assert sorted(means) == pytest.approx(sorted(by_structure["probe.geometry"].to_list()))


def test_summaries_drop_the_per_step_series() -> None:
    summary = {"embed": {"autocorrelation": 0.1}}
    results = {"geometry": {"every": 10, "summary": summary, "series": [{}] * 9, "value": 0.1}}
    assert probe_summaries(results) == {"geometry": {"every": 10, "summary": summary, "value": 0.1}}


@pytest.mark.parametrize(
    "big",
    [["x" * 100] * (PROBES_ATTR_BYTES // 100), {"tensor": object()}],
    ids=["too large", "not JSON"],
)
def test_results_too_large_or_not_json_keep_only_their_top_level_numbers(big: object) -> None:
    results = {"ray": {"tables": big, "note": "n", "value": math.pi}, "outliers": {"value": None}}
    assert probe_summaries(results) == {"ray": {"note": "n", "value": math.pi}, "outliers": {"value": None}}
