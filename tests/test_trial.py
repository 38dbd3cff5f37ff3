"""The trial record: one writer, one reader, and studies written before it still load."""

from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from optispace.chain import parse_chain
from optispace.report.frames import trials_frame
from optispace.search.storage import open_storage
from optispace.trial import (
    RoleRun,
    TrialRecord,
    attributes,
    from_attributes,
    primitive_names,
    read,
    role_sort_key,
    without_idle,
    write,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

LEGACY = Path(__file__).parent / "fixtures" / "smoke_before_record.journal"

finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=8)
names = st.text("abcdefgh_", min_size=1, max_size=6)
chain_texts = st.sampled_from(["identity", "sign", "momentum(0.9) > second_moment(full)", "normalize(row)"])


@st.composite
def role_runs(draw) -> RoleRun:
    trained = draw(st.none() | chain_texts)
    label = draw(st.none() | st.just(trained)) if trained is not None else draw(st.none() | chain_texts)
    run = RoleRun(trained, label, draw(st.none() | finite), draw(st.none() | st.integers(0, 2**40)))
    assume(run != RoleRun())  # a role with nothing recorded leaves no attribute
    return run


records = st.builds(
    TrialRecord,
    roles=st.dictionaries(st.sampled_from(["embed", "head", "matrix", "vector", "extra"]), role_runs()),
    hp=st.none() | st.dictionaries(names, finite),
    seeds=st.none() | st.lists(st.integers(0, 99)).map(tuple),
    seed_losses=st.none() | st.lists(st.none() | finite).map(tuple),
    tokens_per_s=st.none() | finite,
    wall_time_s=st.none() | finite,
    tokens_per_step=st.none() | st.integers(1, 2**20),
    device=st.none() | text,
    corpus_fingerprint=st.none() | text,
    worker=st.none() | st.integers(0, 64),
    probe_values=st.dictionaries(names, st.none() | finite),
    probes=st.none() | st.dictionaries(names, st.dictionaries(names, finite)),
    curve=st.none() | st.lists(st.tuples(st.integers(1, 10**6), finite)).map(tuple),
    failure=st.none() | text,
    failure_step=st.none() | st.integers(0, 10**6),
    regime=st.none() | text,
    scale=st.dictionaries(names, finite),
    seed_metrics=st.dictionaries(names, st.lists(st.none() | finite).map(tuple)),
)


@given(records)
def test_what_is_written_reads_back_equal(record):
    assert from_attributes(attributes(record)) == record


@given(records)
def test_structure_and_total_state_are_computed_from_the_roles(record):
    attrs = attributes(record)
    labels = [record.roles[r].label for r in sorted(record.roles, key=role_sort_key)]
    if record.roles and None not in labels:
        assert attrs["structure"].split(" | ") == [
            f"{r}: {label}" for r, label in zip(sorted(record.roles, key=role_sort_key), labels, strict=True)
        ]
    else:
        assert "structure" not in attrs
    counts = [run.state_bytes for run in record.roles.values()]
    assert attrs.get("state_bytes") == (sum(counts) if counts and None not in counts else None)


def test_the_one_writer_sets_user_attributes_on_a_trial():
    study = optuna.create_study()
    trial = study.ask()
    write(trial, TrialRecord(worker=3, roles={"embed": RoleRun("sign", "sign", 0.1)}))
    write(trial, TrialRecord(failure="crashed: boom", failure_step=7))
    study.tell(trial, 1.0)
    record = read(study.trials[0])
    assert (record.worker, record.failure, record.failure_step) == (3, "crashed: boom", 7)
    assert record.roles == {"embed": RoleRun("sign", "sign", 0.1)} and record.structure == "embed: sign"


def test_a_label_showing_a_primitive_not_trained_is_refused():
    with pytest.raises(ValueError, match="does not have the primitives of the chain trained"):
        RoleRun("momentum(0.9)", "momentum(0.9) > weight_decay(0.01)")
    RoleRun("momentum(0.85) > weight_decay(0.1)", "momentum(0.9) > weight_decay(0.01)")  # tuned numbers


def test_without_idle_drops_a_zero_decay_from_both_chains():
    label, trained = without_idle(
        parse_chain("momentum(0.9) > weight_decay(0.01) > l2(0.01)"),
        parse_chain("momentum(0.8) > weight_decay(0.0) > l2(0.0)"),
    )
    assert (str(label), str(trained)) == ("momentum(0.9)", "momentum(0.8)")
    with pytest.raises(ValueError, match="differ in their primitives"):
        without_idle(parse_chain("sign"), parse_chain("momentum(0.9)"))


def test_primitive_names_of_a_chain_text():
    assert primitive_names("momentum(0.9, nesterov=True) > orthogonalize > shape_scale(original)") == [
        "momentum",
        "orthogonalize",
        "shape_scale",
    ]
    assert primitive_names("identity") == []


def test_roles_sort_in_the_canonical_order_then_by_name():
    ordered = sorted(["vector", "custom", "head", "embed"], key=role_sort_key)
    assert ordered == ["embed", "head", "vector", "custom"]


def _legacy(name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(str(LEGACY))).get_trials(deepcopy=False)


@pytest.mark.parametrize("name", ["smoke", "smoke_pareto"])
def test_a_study_written_before_the_record_still_loads(name):
    trials = _legacy(name)
    records = [read(t) for t in trials]
    for trial, record in zip(trials, records, strict=True):
        assert record.worker == 0 and record.seeds == (0,) and record.hp == trial.user_attrs["hp"]
        assert set(record.roles) == {"embed", "head", "matrix", "vector"}
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert record.device == "cpu" and record.tokens_per_step == trial.user_attrs["tokens_per_step"]
            assert record.state_bytes == trial.user_attrs["state_bytes"]
            assert record.seed_losses == tuple(trial.user_attrs["seed_losses"])
    frame = trials_frame(trials)
    assert frame.height == len(trials) and frame.schema["worker"] == pl.Int64
    assert frame["worker"].to_list() == [0] * len(trials)
    if name == "smoke_pareto":
        assert all(r.curve and set(r.probe_values) == {"ray", "geometry", "outliers"} for r in records)
        assert all(set(r.probes) == {"ray", "geometry", "outliers"} for r in records)


def test_old_labels_lose_the_decay_a_trial_trained_at_zero():
    # Five smoke trials trained weight_decay(0.0) under a label showing weight_decay(0.01).
    trials = _legacy("smoke")
    zero = [t for t in trials if t.user_attrs["hp"]["matrix.weight_decay"] == 0.0]
    assert len(zero) == 5 and all("weight_decay(0.01)" in t.user_attrs["chain.matrix"] for t in zero)
    for trial in trials:
        record = read(trial)
        decays = trial.user_attrs["hp"]["matrix.weight_decay"] != 0.0
        matrix = record.roles["matrix"]
        assert ("weight_decay" in matrix.label) == decays and ("weight_decay" in matrix.trained) == decays
        assert ("weight_decay" in record.structure) == decays
        assert primitive_names(matrix.label) == primitive_names(matrix.trained)
    frame = trials_frame(trials)
    assert frame["structure"].to_list() == [read(t).structure for t in sorted(trials, key=lambda t: t.number)]
