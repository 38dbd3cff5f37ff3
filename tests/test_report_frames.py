"""Trials -> polars frames: one row per trial and per evaluation, nothing dropped, types from all trials."""

import optuna
import polars as pl
from hypothesis import given
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from optispace.report import frames
from optispace.report.synthetic import known_study, known_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_one_row_per_trial_with_states_and_failures(study, trials):
    assert trials["number"].to_list() == list(range(len(study.trials)))
    states = dict(trials.group_by("state").len().iter_rows())
    assert states == {"COMPLETE": 15, "FAIL": 1, "PRUNED": 1, "RUNNING": 1}
    diverged = trials.filter(pl.col("diverged"))
    assert diverged["failure"].to_list() == ["non-finite loss"] * 2
    assert diverged["val_loss"].null_count() == 2
    assert diverged["values"].to_list() == [[20.0, 558_260.0]] * 2  # the penalty, kept as stored
    crashed = trials.filter(pl.col("state") == "FAIL").row(0, named=True)
    assert crashed["failure"] == "crashed: out of memory" and crashed["val_loss"] is None


def test_attributes_become_typed_columns(trials):
    row = trials.row(0, named=True)
    assert row["chain.embed"] == "momentum(0.9) > second_moment(full)"
    assert row["structure"].startswith("embed: momentum(0.9) > second_moment(full) | head: ")
    assert row["lr.embed"] == 1e-3 and row["lr.matrix"] == 1e-2
    assert row["state_bytes"] == 1_106_000 and row["state_bytes.embed"] == 512_000
    assert row["seeds"] == [0, 1, 2] and len(row["seed_losses"]) == 3
    assert (row["device"], row["corpus_fingerprint"], row["tokens_per_step"]) == ("cpu", "c0ffee", 1024)
    assert trials.schema["state_bytes"] == pl.Int64 and trials.schema["tokens_per_s"] == pl.Float64
    assert trials.schema["seed_losses"] == pl.List(pl.Float64)


def test_conditional_parameter_that_appears_late_is_kept(trials):
    ns = trials["param.matrix.ns_steps"]
    assert trials.schema["param.matrix.ns_steps"] == pl.Int64
    sampled = trials.filter(pl.col("param.matrix.orthogonalize") == "yes")
    assert set(sampled["param.matrix.ns_steps"]) == {5}
    assert ns.null_count() == len(trials) - len(sampled)
    assert trials["param.embed.second_moment"].dtype == pl.String


def test_curves_hold_every_reported_value(study):
    curves = frames.curves_frame(study.get_trials(deepcopy=False))
    expected = sum(len(t.intermediate_values) for t in study.trials)
    assert len(curves) == expected
    first = curves.filter(pl.col("number") == 0)
    assert first["step"].to_list() == [100, 200, 300, 400, 500]
    assert first["tokens"].to_list() == [s * 1024 for s in first["step"]]
    assert curves.equals(curves.sort("number", "step"))


def test_params_frame_describes_each_distribution(study):
    params = frames.params_frame(study.get_trials(deepcopy=False))
    rows = {r["name"]: r for r in params.iter_rows(named=True)}
    assert rows["embed.second_moment"]["kind"] == "categorical"
    assert rows["embed.second_moment"]["choices"] == '["full", "factored", "none"]'
    assert (rows["embed.lr"]["role"], rows["embed.lr"]["family"], rows["embed.lr"]["log"]) == (
        "embed",
        "lr",
        True,
    )
    assert rows["matrix.ns_steps"]["kind"] == "int"


def test_study_info_reads_the_search_attributes(study):
    info = frames.study_info(study)
    assert info.tolerance == 0.02 and info.penalty == 20.0 and info.seeds == (0, 1, 2)
    assert info.objectives == ("val_loss", "state_bytes") and info.directions == ("minimize", "minimize")


def test_a_trial_with_no_attributes_still_gets_a_row():
    running = optuna.trial.create_trial(state=TrialState.RUNNING)
    frame = frames.trials_frame([known_trial("adam", 3e-3), running])
    assert len(frame) == 2 and frame["structure"].null_count() == 1


def test_storages_give_the_same_frames(tmp_path, trials):
    from optispace.search.storage import open_storage

    for url in (str(tmp_path / "s.journal"), f"sqlite:///{tmp_path / 's.db'}"):
        stored = known_study(open_storage(url))
        assert frames.trials_frame(stored.get_trials(deepcopy=False)).equals(trials)


choice = st.sampled_from(["a", "b", "c"])


@given(st.lists(st.tuples(st.none() | choice, st.none() | st.floats(1e-4, 1.0)), min_size=1, max_size=8))
def test_every_sampled_value_survives_whatever_trial_first_samples_it(samples):
    made = []
    for kind, lr in samples:
        params, dists = {}, {}
        if kind is not None:
            params["embed.kind"], dists["embed.kind"] = kind, CategoricalDistribution(["a", "b", "c"])
        if lr is not None:
            params["embed.lr"], dists["embed.lr"] = lr, FloatDistribution(1e-4, 1.0, log=True)
        made.append(optuna.trial.create_trial(values=[1.0], params=params, distributions=dists))
    frame = frames.trials_frame(made)
    assert frame.height == len(samples)
    if any(k is not None for k, _ in samples):
        assert frame["param.embed.kind"].to_list() == [k for k, _ in samples]
    if any(lr is not None for _, lr in samples):
        assert frame["param.embed.lr"].to_list() == [lr for _, lr in samples]


def test_a_pruned_trial_value_is_not_a_final_loss():
    # Optuna stores a pruned trial's last intermediate value as its value.
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED, value=4.0, intermediate_values={16: 4.0})
    frame = frames.trials_frame([pruned])
    assert frame["values"].to_list() == [[4.0]] and frame["val_loss"].to_list() == [None]


def test_a_pareto_trial_curve_comes_from_its_curve_attribute():
    trial = known_trial("adam", 3e-3, curve={})
    trial.user_attrs["curve"] = [[16, 5.0], [32, 4.5]]
    curves = frames.curves_frame([trial])
    assert curves.select("step", "tokens", "val_loss").rows() == [(16, 16 * 1024, 5.0), (32, 32 * 1024, 4.5)]


def test_probe_values_become_float_columns_whichever_trial_records_them_first():
    plain, ray_only, both = (known_trial("adam", lr) for lr in (1e-3, 3e-3, 1e-2))
    ray_only.user_attrs.update({"probe.ray": 0.25, "probes": {"ray": {"value": 0.25}}})
    both.user_attrs.update({"probe.ray": None, "probe.geometry": 1, "probes": {"geometry": {"value": 1}}})
    frame = frames.trials_frame([plain, ray_only, both])
    assert frame.schema["probe.geometry"] == pl.Float64 and frame.schema["probe.ray"] == pl.Float64
    assert frame["probe.ray"].to_list() == [None, 0.25, None]
    assert frame["probe.geometry"].to_list() == [None, None, 1.0]
    assert frame["probes"].to_list() == [None, '{"ray": {"value": 0.25}}', '{"geometry": {"value": 1}}']
    assert frames.probe_names(frame.columns) == ["geometry", "ray"]


def test_a_study_without_probes_has_no_probe_columns(trials):
    assert not [c for c in trials.columns if c.startswith("probe")]


def test_study_info_reads_the_regime_and_defaults_to_pretraining():
    study = optuna.create_study()
    assert (frames.study_info(study).regime, frames.study_info(study).objective) == ("pretrain", "val_loss")
    study.set_user_attr("regime", "rl")
    study.set_user_attr("objective", "reward_error")
    assert (frames.study_info(study).regime, frames.study_info(study).objective) == ("rl", "reward_error")
