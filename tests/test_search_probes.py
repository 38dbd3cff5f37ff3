"""Probes in a study: the search file asks for them, each trial records them, the report shows them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import polars as pl
import pytest
from test_search_run import FakeTrainer, search_text

from optispace.proxies.train import RunRecord
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


@pytest.mark.slow  # with the study it trains: about 4 s on a busy 2-core machine
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


@pytest.mark.slow
def test_the_report_carries_probe_values_per_trial_and_per_structure(
    study: optuna.Study, tmp_path: Path
) -> None:
    from optispace.report import build_report, write_report

    report = build_report(study)
    write_report(report, tmp_path)
    trials = pl.read_parquet(tmp_path / "trials.parquet").sort("number")
    assert trials.schema["probe.geometry"] == pl.Float64
    stored = [t.user_attrs["probe.geometry"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert trials["probe.geometry"].to_list() == stored
    assert json.loads(trials["probes"][0]) == study.trials[0].user_attrs["probes"]
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| geometry probe |" in markdown
    write_report(build_report(study), tmp_path / "again")
    for name in ("report.md", "trials.parquet"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    means = report.structures["probe.geometry"].to_list()
    by_structure = trials.group_by("structure").agg(pl.col("probe.geometry").mean())
    assert sorted(means) == pytest.approx(sorted(by_structure["probe.geometry"].to_list()))


def test_probes_ride_on_the_first_seed_only_and_land_on_the_trial(tmp_path: Path) -> None:
    seen = []

    def trainer(config: dict, on_eval) -> RunRecord:
        seen.append((config["seed"], config["probes"]))
        on_eval(1, 256, 3.0)
        record = RunRecord(config=config, corpus={}, final_val_loss=3.0, state_bytes={"embed": 8})
        if config["probes"]:
            record.probes = {"ray": {"value": 0.5, "series": [1.0, 2.0]}, "outliers": {"value": None}}
        return record

    text = search_text().replace("eval_every = 1", 'eval_every = 1\nprobes = ["ray", "outliers"]')
    url = str(tmp_path / "s.journal")
    run_search(parse_search_text(text, "unit.toml"), url, n_trials=1, trainer=trainer, progress=False)
    assert seen == [(0, ("ray", "outliers")), (1, ())]
    attrs = optuna.load_study(study_name="unit", storage=open_storage(url)).trials[0].user_attrs
    assert (attrs["probe.ray"], attrs["probe.outliers"]) == (0.5, None)
    assert attrs["probes"] == {"ray": {"value": 0.5}, "outliers": {"value": None}}


def test_a_study_without_probes_records_none(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    run_search(
        parse_search_text(search_text(), "unit.toml"), url, n_trials=1, trainer=FakeTrainer(), progress=False
    )
    attrs = optuna.load_study(study_name="unit", storage=open_storage(url)).trials[0].user_attrs
    assert not [key for key in attrs if key.startswith("probe")]


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
